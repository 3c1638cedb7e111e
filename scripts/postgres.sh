#!/usr/bin/env bash
# A throwaway PostgreSQL server for the end-to-end tests, from Debian's `postgresql` package:
# its own data folder (initdb), loopback only, a random free port, a random password.
#
#   scripts/postgres.sh run -- COMMAND...  start one, run COMMAND with ROBUSTAR_LS_POSTGRES set
#                                          to its URL, stop it (also when COMMAND fails or is
#                                          interrupted); exits with COMMAND's status
#   scripts/postgres.sh start [DIR]        start one with its files in DIR (default: a new temp
#                                          folder); prints its URL, also written to DIR/url
#   scripts/postgres.sh stop DIR           stop it and delete DIR
#
# The URL reads postgresql://USER:PASSWORD@127.0.0.1:PORT/postgres; the end-to-end tests create
# a database of their own in it per session (tests/label_studio_launcher.py). As root, a
# missing server is installed with apt-get (without Debian's default cluster) and runs as the
# `postgres` user (PostgreSQL refuses to run as root). fsync is off: the data is thrown away.
set -euo pipefail

PG_USER=robustar

die() { echo "postgres.sh: $*" >&2; exit 1; }

pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

install_postgres() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || die "no PostgreSQL server found: install Debian's postgresql package (apt-get install postgresql)"
  echo "postgres.sh: installing Debian's postgresql package" >&2
  # No `main` cluster: this script makes its own, and nothing should listen on 5432.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/robustar-ls.conf
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
}

# Run a server command as the owner of the data folder: `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir=${1:-} bin password port try
  bin=$(pg_bindir) || { install_postgres; bin=$(pg_bindir) || die "initdb not found after install"; }
  if [ -z "$dir" ]; then dir=$(mktemp -d "${TMPDIR:-/tmp}/robustar-ls-postgres.XXXXXX"); fi
  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty (a running server? postgres.sh stop $dir)"
  touch "$dir/.robustar-ls-postgres"  # stop deletes only folders that carry this mark
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no postgres user (Debian's postgresql package creates it)"
    chown postgres: "$dir"
  fi
  chmod 700 "$dir"
  password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  (umask 077 && echo "$password" >"$dir/pwfile")
  [ "$(id -u)" != 0 ] || chown postgres: "$dir/pwfile"
  as_owner "$bin/initdb" -D "$dir/data" -U "$PG_USER" --pwfile="$dir/pwfile" \
    --auth=scram-sha-256 --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  rm -f "$dir/pwfile"
  for try in 1 2 3; do  # the port is free when chosen; another process may take it first
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 -o \
      "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='$dir' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >&2; then
      echo "postgresql://$PG_USER:$password@127.0.0.1:$port/postgres" >"$dir/url"
      cat "$dir/url"
      return 0
    fi
    echo "postgres.sh: start on port $port failed (try $try):" >&2
    tail -n 5 "$dir/postgres.log" >&2 || true
  done
  die "PostgreSQL did not start; log in $dir/postgres.log"
}

stop() {
  local dir=${1:?usage: postgres.sh stop DIR} bin
  [ -d "$dir" ] || return 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    bin=$(pg_bindir) || die "pg_ctl not found"
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || true
  fi
  [ -f "$dir/.robustar-ls-postgres" ] || die "$dir was not made by postgres.sh start; not deleting it"
  rm -rf "$dir"
}

run() {
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: postgres.sh run -- COMMAND..."
  local url rc
  RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/robustar-ls-postgres.XXXXXX")
  trap 'stop "$RUN_DIR"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  url=$(start "$RUN_DIR")
  echo "postgres.sh: PostgreSQL at ${url%%:*}://…@${url##*@} (files in $RUN_DIR)" >&2
  set +e
  ROBUSTAR_LS_POSTGRES=$url "$@"
  rc=$?
  set -e
  return $rc
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  run) shift; run "$@" ;;
  *) die "usage: postgres.sh run -- COMMAND... | start [DIR] | stop DIR" ;;
esac
