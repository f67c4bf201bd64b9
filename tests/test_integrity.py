"""Data integrity of a build (issue 9): no wrong output without an error.

Corrupted outputs are rebuilt, never reported as finished; two builds never write one folder or one
cache; model text never crashes the cache; checks run before anything is written; killed writers'
temp files are cleaned; the build key follows content, not paths.
"""

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import DATA, env_with_tests_on_path, read_rows, scripted_recipe
from spark_hub.backends.base import Completion, GenerationRequest
from spark_hub.backends.scripted import ScriptedBackend
from spark_hub.cache import CachedBackend, CallCache
from spark_hub.config import load_build_config
from spark_hub.errors import SparkHubError
from spark_hub.io import atomic_write_text
from spark_hub.stages import build

GOLDEN_RECORDS = [json.loads(l) for l in open(DATA / "golden" / "scripted_step_records.jsonl")]
SHARD = Path("data") / "train-00000-of-00001.parquet"


def run(recipe, out, *overrides, **kwargs):
    config = load_build_config(recipe, list(overrides), output_dir=str(out), **kwargs)
    return build.main(config, progress=False)


def project(rows):
    return [{k: row[k] for k in GOLDEN_RECORDS[0]} for row in rows]


# ----------------------------------------------------------------------------- corrupted outputs


@pytest.mark.parametrize("victim", [str(SHARD), "config.yaml"])
def test_corrupted_output_is_rebuilt_from_cache(tmp_path, caplog, victim):
    """64 bytes overwritten in place (same size): the re-run notices, says so, rebuilds with 0 calls."""
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    run(recipe, out)
    path = out / victim
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="spark_hub"):
        again = run(recipe, out)
    assert not again.reused
    assert again.model_requests == {"generator": 0, "verifier": 0}
    assert f"{victim} has another sha256" in caplog.text and "rebuilding the outputs from the call cache" in caplog.text
    assert project(read_rows(out)) == GOLDEN_RECORDS
    assert build.changed_files(out, again.manifest) is None
    assert run(recipe, out).reused  # and now it is finished again


def test_shard_the_manifest_does_not_list_is_not_finished(tmp_path, caplog):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    run(recipe, out)
    (out / "data" / "train-00001-of-00001.parquet").write_bytes((out / SHARD).read_bytes())
    with caplog.at_level(logging.WARNING, logger="spark_hub"):
        again = run(recipe, out)
    assert not again.reused and "not in the manifest" in caplog.text


# ----------------------------------------------------------------------------- concurrent builds


def _spawn_gated(recipe, out, gate, *overrides):
    """A CLI build whose first model call blocks until ``gate`` exists (see tests/slow_backend.py)."""
    env = env_with_tests_on_path()
    env["SPARK_TEST_DELAY"] = "0"
    env["SPARK_TEST_GATE"] = str(gate)
    cmd = [sys.executable, "-m", "spark_hub.cli", "build-dataset", "--config", str(recipe),
           "--output-dir", str(out), "--no-progress", "-q",
           "--set", "generator.backend=slow_backend:SlowScriptedBackend",
           "--set", "verifier.backend=slow_backend:SlowScriptedBackend",
           "--set", "generator.batch_size=1", "--set", "verifier.batch_size=1"]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if proc.poll() is not None:
            raise AssertionError(f"first build ended early: {proc.communicate()[1].decode()}")
        assert time.monotonic() < deadline, "first build never reached its first model call"
        time.sleep(0.02)


def test_second_build_on_the_same_folder_exits_2_at_once(tmp_path):
    recipe, out, gate = scripted_recipe(tmp_path), tmp_path / "out", tmp_path / "gate"
    first = _spawn_gated(recipe, out, gate)
    try:
        _wait_for(str(gate) + ".waiting", first)  # the first build is inside a model call
        # in-process: refused at once, naming the holder
        with pytest.raises(SparkHubError, match=rf"another build \(pid {first.pid}\) is writing .*out"):
            run(recipe, out)
        # through the CLI: one line, exit 2, no traceback
        env = env_with_tests_on_path()
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "spark_hub.cli", "build-dataset", "--config", str(recipe),
                                 "--output-dir", str(out), "--no-progress", "-q"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"another build (pid {first.pid}) is writing" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None  # the second one did not wait for the first
        assert time.monotonic() - started < 60
    finally:
        gate.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["statistics"]["model_requests"].values()) == 8  # no call made twice
    assert len(CallCache(out / ".spark" / "cache.sqlite")) == 8
    assert project(read_rows(out)) == GOLDEN_RECORDS
    assert run(recipe, out).reused  # the lock is released when the holder ends


def test_second_build_on_a_shared_cache_is_refused(tmp_path):
    recipe, gate, shared = scripted_recipe(tmp_path), tmp_path / "gate", tmp_path / "shared.sqlite"
    first = _spawn_gated(recipe, tmp_path / "one", gate, f"cache={shared}")
    try:
        _wait_for(str(gate) + ".waiting", first)
        with pytest.raises(SparkHubError, match=rf"another build \(pid {first.pid}\) is writing .*shared.sqlite"):
            run(recipe, tmp_path / "two", f"cache={shared}")
    finally:
        gate.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    again = run(recipe, tmp_path / "two", f"cache={shared}")
    assert again.model_requests == {"generator": 0, "verifier": 0}  # everything came from the shared cache


def test_lock_is_released_after_a_failed_build(tmp_path):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    with pytest.raises(SparkHubError):
        run(recipe, out, f"verifier.model={tmp_path / 'missing.jsonl'}")
    run(recipe, out)  # not "another build"


# ----------------------------------------------------------------------------- hostile model text


def test_cache_stores_a_lone_surrogate_losslessly(tmp_path):
    cache = CallCache(tmp_path / "cache.sqlite")
    text = "The answer is 42 \ud83d and \U0001F600 stays"
    cache.put_many([("k", "m", [Completion(text, "stop", 3)])])
    assert cache.get_many(["k"])["k"][0].text == text
    assert cache.escaped == 1


def test_build_keeps_going_on_a_lone_surrogate(tmp_path, caplog):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="spark_hub"):
        result = run(recipe, out, "verifier.backend=slow_backend:SurrogateScriptedBackend")
    assert result.statistics["invalid_unicode_completions"] == 15
    assert "invalid Unicode" in caplog.text
    verifications = read_rows(out, "verifications")
    assert all(v["raw_text"].endswith("\ufffd") for v in verifications)
    # the cache kept the model's text as it came
    cache = CallCache(out / ".spark" / "cache.sqlite")
    blobs = [row[0] for row in cache._db.execute("SELECT completions FROM calls")]
    assert sum("\\ud83d" in b for b in blobs) == 5
    again = run(recipe, out, "verifier.backend=slow_backend:SurrogateScriptedBackend")
    assert again.reused


# ----------------------------------------------------------------------------- checks before writing


def test_corrupt_model_config_fails_before_anything_is_written(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 64,\n')  # cut short
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    with pytest.raises(SparkHubError, match=r"verifier model: config.json is not valid JSON") as e:
        run(recipe, out, "verifier.backend=transformers", f"verifier.model={model}")
    assert f"{model / 'config.json'}:4" in str(e.value)
    assert not out.exists()


def test_model_config_without_model_type_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    out.mkdir()
    with pytest.raises(SparkHubError, match="generator model: config.json has no 'model_type'"):
        run(recipe, out, "generator.backend=transformers", f"generator.model={model}")
    assert not (out / ".spark").exists()


# ----------------------------------------------------------------------------- temp files, modes


def test_stale_temp_files_are_cleaned_at_start(tmp_path):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    run(recipe, out)
    stale = [out / ".manifest.json.1a2b3c4d.tmp", out / ".README.md.deadbeef.tmp",
             out / "data" / ".train-00000-of-00001.parquet.0badf00d.tmp"]
    for p in stale:
        p.write_text("partial")
    keep = out / "data" / "notes.tmp"  # not a spark-hub temp name
    assert run(recipe, out).reused
    assert not [p for p in stale if p.exists()]
    assert not keep.exists() or keep.is_file()


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o002)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o664


def test_build_outputs_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        run(scripted_recipe(tmp_path), out)
    finally:
        os.umask(old)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert any(name.endswith(".png") for name in files)  # the agreement plot is among them
    for name in ["README.md", "manifest.json", *files]:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


# ----------------------------------------------------------------------------- build key


def test_same_input_from_another_path_reuses_the_build(tmp_path, monkeypatch):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    first = run(recipe, out, "problems=problems_small.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "copy.jsonl").write_bytes((tmp_path / "problems_small.jsonl").read_bytes())
    monkeypatch.chdir(elsewhere)
    again = run(recipe, out, "problems=copy.jsonl")
    assert again.reused and again.manifest["build_key"] == first.manifest["build_key"]
    # a changed file is a new build
    (elsewhere / "copy.jsonl").write_text((elsewhere / "copy.jsonl").read_text().replace("$15", "$16"))
    assert not run(recipe, out, "problems=copy.jsonl").reused


# ----------------------------------------------------------------------------- cache commits


def test_cache_commits_once_per_engine_call(tmp_path):
    recipe = scripted_recipe(tmp_path)
    from spark_hub.backends.base import BackendConfig

    backend = ScriptedBackend(BackendConfig(backend="scripted", model=str(recipe.parent / "verifier.jsonl")))
    cache = CallCache(tmp_path / "cache.sqlite")
    commits = []
    cache._db.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper().startswith("COMMIT") else None)
    cached = CachedBackend(backend, cache, batch_size=1)
    requests = [GenerationRequest.from_chat([{"role": "user", "content": f"Teacher Verification 60 x 12 = 720 ({i})"}],
                                            n=1) for i in range(6)]
    cached.generate(requests)
    assert cached.model_calls == 6 and len(commits) == 1
    assert len(cache) == 6
    # a slow engine call is committed as soon as it returns (at most COMMIT_INTERVAL of work is at risk)
    commits.clear()
    slow = CachedBackend(backend, cache, batch_size=1, commit_interval=0.0)
    slow.generate([GenerationRequest.from_chat(r.chat(), n=2) for r in requests[:3]])
    assert slow.model_calls == 3 and len(commits) == 3


def test_cached_answers_are_reported_as_cached(tmp_path):
    recipe = scripted_recipe(tmp_path)
    from spark_hub.backends.base import BackendConfig

    backend = ScriptedBackend(BackendConfig(backend="scripted", model=str(recipe.parent / "verifier.jsonl")))
    cached = CachedBackend(backend, CallCache(tmp_path / "cache.sqlite"), batch_size=2)
    requests = [GenerationRequest.from_chat([{"role": "user", "content": f"Teacher Verification 60 x 12 = 720 ({i})"}],
                                            n=1) for i in range(3)]
    calls = []
    cached.generate(requests[:2], on_batch=lambda r, o, cached=False: calls.append((len(r), cached)))
    assert calls == [(2, False)]
    calls.clear()
    cached.generate(requests, on_batch=lambda r, o, cached=False: calls.append((len(r), cached)))
    assert calls == [(2, True), (1, False)]


def test_build_failing_before_any_model_call_leaves_nothing_behind(tmp_path):
    """A backend that fails on its first call (a model that does not load, an unmatched script...)."""
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    mute = tmp_path / "mute.jsonl"
    mute.write_text(json.dumps({"contains": ["no prompt says this"], "completions": ["x"]}) + "\n")
    with pytest.raises(SparkHubError, match="matches a request"):
        run(recipe, out, f"generator.model={mute}")
    assert not out.exists()
    # a failure after model calls were cached keeps them for the resume
    with pytest.raises(SparkHubError, match="matches a request"):
        run(recipe, out, f"verifier.model={mute}")
    assert len(CallCache(out / ".spark" / "cache.sqlite")) == 3
    assert run(recipe, out).model_requests == {"generator": 0, "verifier": 5}


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b""])
def test_corrupted_call_cache_is_a_one_line_error(tmp_path, content):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    run(recipe, out)
    cache = out / ".spark" / "cache.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{cache}{suffix}").unlink(missing_ok=True)
    cache.write_bytes(content)
    (out / "manifest.json").unlink()  # so the build needs its cache
    if content:
        with pytest.raises(SparkHubError, match=r"call cache .*cache.sqlite is not a readable spark-hub cache"):
            run(recipe, out)
    else:  # an empty file is an empty cache: everything is asked again
        assert run(recipe, out).model_requests == {"generator": 3, "verifier": 5}


def test_three_builds_started_together_never_collide(tmp_path):
    """No gate: whoever gets the lock builds; the others exit 2 at once (or reuse the finished build)."""
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    env = env_with_tests_on_path()
    env["SPARK_TEST_DELAY"] = "0.2"
    cmd = [sys.executable, "-m", "spark_hub.cli", "build-dataset", "--config", str(recipe),
           "--output-dir", str(out), "--no-progress", "-q",
           "--set", "generator.backend=slow_backend:SlowScriptedBackend",
           "--set", "verifier.backend=slow_backend:SlowScriptedBackend",
           "--set", "generator.batch_size=1", "--set", "verifier.batch_size=1"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    for rc, err in results:
        assert rc in (0, 2) and "Traceback" not in err, err
        if rc == 2:
            assert "another build (pid" in err and len(err.strip().splitlines()) == 1, err
    assert any(rc == 0 for rc, _ in results)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["statistics"]["model_requests"].values()) == 8
    assert len(CallCache(out / ".spark" / "cache.sqlite")) == 8
    assert project(read_rows(out)) == GOLDEN_RECORDS


def test_crash_while_finalizing_is_rebuilt_from_cache(tmp_path, monkeypatch):
    """Shards moved, card written, then the process dies before the manifest (with a temp file left)."""
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    run(recipe, out)

    def die(folder, manifest, **kwargs):
        (Path(folder) / ".manifest.json.0123abcd.tmp").write_text('{"partial"')
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "write_manifest", die)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, out, "aggregation.method=outcome_consistency")  # a new key: it re-finalizes
    monkeypatch.undo()
    assert not (out / "manifest.json").exists()
    again = run(recipe, out)
    assert not again.reused and again.model_requests == {"generator": 0, "verifier": 0}
    assert project(read_rows(out)) == GOLDEN_RECORDS
    assert not list(out.rglob("*.tmp"))


def test_clean_text_replaces_only_lone_surrogates():
    from spark_hub.cache import clean_text

    texts = ["plain ascii", "Émile paid 15 € 👍", "half \ud83d emoji", "\udc00 low first", "two \ud83d\ude00 halves"]
    cleaned, changed = clean_text([Completion(t) for t in texts])
    assert [c.text for c in cleaned] == ["plain ascii", "Émile paid 15 € 👍", "half \ufffd emoji", "\ufffd low first",
                                         "two \ufffd\ufffd halves"]
    assert changed == 3 and all(len(a.text) == len(b) for a, b in zip(cleaned, texts))  # offsets stay valid


def test_lock_file_of_another_user_still_locks(tmp_path, monkeypatch):
    import spark_hub.io as io_module
    from spark_hub.io import BuildLock

    lock = tmp_path / "build.lock"
    lock.write_text("")
    real_open = os.open

    def no_write(path, flags, *args):  # as if the lock file belonged to another user
        if Path(path) == lock and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(io_module.os, "open", no_write)
    with BuildLock(lock, tmp_path):
        with pytest.raises(SparkHubError, match="another build"):
            BuildLock(lock, tmp_path).acquire()
    BuildLock(lock, tmp_path).acquire().release()


def test_file_named_gguf_that_is_not_one_fails_before_writing(tmp_path):
    fake = tmp_path / "model-Q4_1.gguf"
    fake.write_bytes(b"<html>404 Not Found</html>")  # a failed download saved under the model's name
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    with pytest.raises(SparkHubError, match=r"verifier model: model-Q4_1.gguf is not a GGUF file"):
        run(recipe, out, "verifier.backend=transformers", f"verifier.model={fake}")
    assert not out.exists()
