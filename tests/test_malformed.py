"""A malformed corpus (graphs/make_malformed.py, ~100 files) through every entry point.

Each file goes through `list_layers`, `Explainer(...)`, `Explainer.explain`, `Explainer.save` and
the CLI's `layers` command. The rule: everything a user can cause ends in one package error
(a `SaliencyError`, one line), or, for a file that is fine once repaired, a working explainer.
The files run in worker subprocesses that report one JSON line per file, so a crash fails the
file (and the worker restarts after it) instead of killing pytest.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
STEPS = ("list_layers", "Explainer", "explain", "save", "cli layers")


# --- the worker (runs in a subprocess) ---------------------------------------------------------

def _outcome(fn) -> dict:
    import onnx_saliency as osal

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
            result = {"outcome": "ok"}
        except osal.SaliencyError as exc:
            result = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a leak is what this test looks for
            result = {"outcome": "leak", "type": type(exc).__name__, "message": str(exc)[:300]}
    result["warnings"] = [str(w.message) for w in caught]
    return result


def _explain(ex) -> None:
    import numpy as np

    shape = [1] + [d if isinstance(d, int) else 16 for d in ex.input_shape[1:]]
    maps = ex.explain(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    if not all(m.shape == (1, *shape[2:]) and np.isfinite(m).all() for m in maps.values()):
        raise ValueError(f"maps {[m.shape for m in maps.values()]} for images {shape}")


def _cli_layers(path: str) -> dict:
    from onnx_saliency import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(["layers", path])
        except SystemExit as exc:
            rc = exc.code
        except Exception as exc:  # noqa: BLE001
            return {"outcome": "leak", "type": type(exc).__name__, "message": str(exc)[:300]}
    stderr = err.getvalue()
    if rc == 0:
        return {"outcome": "ok"}
    ok = rc in (1, 2) and stderr.count("\n") == 1 and "Traceback" not in stderr
    return {"outcome": "error" if ok else "leak", "type": f"exit {rc}", "message": stderr.strip()}


def probe(path: str, scratch: str) -> dict:
    import onnx_saliency as osal

    steps = {"list_layers": _outcome(lambda: osal.list_layers(path))}
    built = []
    steps["Explainer"] = _outcome(lambda: built.append(osal.Explainer(path)))
    if built:
        steps["explain"] = _outcome(lambda: _explain(built[0]))
        steps["save"] = _outcome(lambda: built[0].save(os.path.join(scratch, "explainer.onnx")))
    steps["cli layers"] = _cli_layers(path)
    return steps


def worker(folder: str, names: list[str]) -> None:
    """One JSON line per file: {"start": name} before, {"name", "steps"} after."""
    scratch = tempfile.mkdtemp()
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        print(json.dumps({"name": name, "steps": probe(os.path.join(folder, name), scratch)}),
              flush=True)


# --- the parent ------------------------------------------------------------------------------

def _run_worker(folder: Path, names: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--worker", str(folder), *names],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _collect(proc: subprocess.Popen, names: list[str]) -> tuple[dict, list[str]]:
    """Results of one worker, and the names it did not reach (a crash on the first of them)."""
    out, err = proc.communicate(timeout=600)
    results, started = {}, None
    for line in out.splitlines():
        record = json.loads(line)
        if "start" in record:
            started = record["start"]
        else:
            results[record["name"]] = record["steps"]
    left = [n for n in names if n not in results]
    if left:
        crashed = started if started in left else left[0]
        tail = (err.strip().splitlines() or [""])[-1]
        results[crashed] = {"process": {"outcome": "crash", "type": f"exit {proc.returncode}",
                                        "message": tail[:300]}}
        left.remove(crashed)
    return results, left


def run_corpus(folder: Path, names: list[str]) -> dict[str, dict]:
    """Every file through `probe`, in WORKERS parallel subprocesses restarted after crashes."""
    results: dict[str, dict] = {}
    pending = [names[i::WORKERS] for i in range(WORKERS)]
    while any(pending):
        procs = [(_run_worker(folder, chunk), chunk) for chunk in pending if chunk]
        pending = []
        for proc, chunk in procs:
            done, left = _collect(proc, chunk)
            results.update(done)
            pending.append(left)
    return results


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "graphs"))
    import make_malformed

    folder = tmp_path_factory.mktemp("malformed")
    expected = make_malformed.write_corpus(folder)
    return expected, run_corpus(folder, sorted(expected))


def _failures(results: dict, check) -> list[str]:
    lines = []
    for name, steps in sorted(results.items()):
        for step, r in steps.items():
            problem = check(name, step, r)
            if problem:
                detail = f"{r.get('type', '')}: {r.get('message', '')}"
                lines.append(f"{name} [{step}] {problem}: {detail}")
    return lines


def test_every_failure_is_one_package_error(corpus):
    """No other library's exception, no crash, and each message one line."""
    _, results = corpus

    def check(name, step, r):
        if r["outcome"] in ("leak", "crash"):
            return r["outcome"]
        if r["outcome"] == "error" and (not r["message"] or "\n" in r["message"]):
            return "not one line"
        return None

    failures = _failures(results, check)
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(failures)


def test_each_file_gets_its_expected_outcome(corpus):
    """Refused files name the reason; repairable ones explain, with at most one warning."""
    expected, results = corpus

    def check(name, step, r):
        want = expected[name]
        if step != "Explainer" or want == "either" or r["outcome"] in ("leak", "crash"):
            return None
        if want == "works":
            if r["outcome"] != "ok":
                return "should work"
            return "more than one warning" if len(r["warnings"]) > 1 else None
        if r["outcome"] != "error":
            return f"should be refused ({want})"
        pattern = want.partition(":")[2]
        if pattern and not re.search(pattern, r["message"], re.IGNORECASE):
            return f"message should match {pattern!r}"
        return None

    failures = _failures(results, check)
    failures += [f"{name}: missing" for name in expected if name not in results]
    failures += [f"{name} [{step}] {r['outcome']}" for name, steps in results.items()
                 if expected[name] == "works" for step, r in steps.items() if r["outcome"] != "ok"]
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(sorted(set(failures)))


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2], sys.argv[3:])
