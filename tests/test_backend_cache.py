"""The backend's caches: the bounded LRU and the heatmap files per model version."""

from __future__ import annotations

from robustar_ls.backend.cache import HeatmapCache, LRUCache


def test_lru_evicts_the_least_recently_used():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    off = LRUCache(0)
    off.put("a", 1)
    assert off.get("a") is None and len(off) == 0


def test_heatmaps_are_named_by_identity_and_old_versions_pruned(tmp_path):
    heatmaps = HeatmapCache(tmp_path)
    first = heatmaps.path("v1-abc", "file:/x.png:1:2")
    assert first.parent == tmp_path / "saliency" / "v1-abc"
    assert heatmaps.path("v1-abc", "file:/x.png:1:2") == first
    assert heatmaps.path("v1-abc", "file:/x.png:1:3") != first
    heatmaps.put(first, b"png1")
    heatmaps.put(heatmaps.path("v1-abc", "other"), b"png2")  # same version: nothing pruned
    assert len(list(first.parent.iterdir())) == 2
    second = heatmaps.path("v2/../evil", "file:/x.png:1:2")
    assert second.parent.parent == tmp_path / "saliency"  # a version is one safe folder name
    heatmaps.put(second, b"png3")
    assert [p.name for p in (tmp_path / "saliency").iterdir()] == [second.parent.name]
    assert second.read_bytes() == b"png3"


def test_outputs_are_computed_once_per_version_and_identity():
    from types import SimpleNamespace

    from robustar_ls.backend.cache import OutputCache

    cache, computed, failing = OutputCache(8), [], {"b"}
    a, b = SimpleNamespace(identity="a"), SimpleNamespace(identity="b")

    def outputs(version, images):
        def compute(todo):
            computed.append([images[i].identity for i in todo])
            return [None if images[i].identity in failing else images[i].identity for i in todo]

        return cache.outputs(version, images, compute)

    assert outputs("v1", [a, None, b]) == ["a", None, None]  # None: the image failed to fetch
    assert computed == [["a", "b"]]  # one call for the missing ones
    failing.clear()
    assert outputs("v1", [b, a, a]) == ["b", "a", "a"]  # a failed output is not kept
    assert computed[-1] == ["b"]
    assert outputs("v1", [a, b]) == ["a", "b"] and len(computed) == 2  # all cached
    outputs("v2", [a])  # a new model version computes again
    assert computed[-1] == ["a"]
    cache.clear()
    outputs("v2", [a])
    assert len(computed) == 4
