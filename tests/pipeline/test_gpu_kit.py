"""The GPU kit (benchmarks/gpu/bundle.sh and run.sh) on the CPU: the bundle builds from this checkout within its size
limit, installs without network into a folder of its own, and the one job runs from that folder (throughput, then
the AgentPRM loop of configs/alfworld-gpu.yaml) at toy size, writing what the device tool brings back."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agentprm.pipeline.report import read_summary

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kit") / "whl"
    built = subprocess.run(["bash", "benchmarks/gpu/bundle.sh", str(folder)], cwd=ROOT, capture_output=True,
                           text=True, timeout=1200, env={**os.environ, "PYTHON": sys.executable})
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return folder, built.stdout


@pytest.mark.slow
def test_the_bundle_holds_what_the_gpu_machine_lacks_within_60_mib(bundle):
    folder, log = bundle
    names = {re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() for w in folder.glob("*.whl")}
    assert {"agentprm", "alfworld", "textworld", "tatsu", "jericho", "fast_downward_textworld",
            "transformers"} <= names
    assert not names & {"torch", "spacy", "tokenizers", "numpy"}  # the machine has them (or they are not needed)
    size = sum(w.stat().st_size for w in folder.glob("*.whl")) / 2 ** 20
    assert size < 60 and f"{size:.1f} MiB (limit 60 MiB)" in log


@pytest.mark.slow
def test_the_job_installs_the_bundle_and_runs_throughput_and_the_loop_from_it(bundle, tmp_path):
    folder, _ = bundle
    out, site = tmp_path / "out", tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PYTHON": sys.executable, "BUNDLE": str(folder), "SITE": str(site), "WORK": str(tmp_path / "work"),
            "KIT_SIZE": "toy", "DEVICE": "cpu", "PRECISION": "fp32", "LOOP_PRECISION": "bf16", "BUDGET_S": "900"}
    job = subprocess.run(["bash", "benchmarks/gpu/run.sh", str(out)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    phases = json.loads((out / "job.json").read_text())
    for name in ("install", "throughput", "loop"):
        assert phases[name]["status"] == 0, (name, (out / "run.log").read_text()[-3000:],
                                             (out / "throughput.log").read_text()[-3000:])
    assert phases["seconds"] <= 900 and phases["kit_size"] == "toy"

    environment = (out / "environment.txt").read_text()
    for package in ("agentprm", "alfworld", "textworld", "transformers"):  # imported from the bundle, not the venv
        assert re.search(rf"^{package} \S+ from {re.escape(str(site))}/", environment, re.M), environment

    throughput = json.loads((out / "gpu_throughput.json").read_text())
    (tiny,) = throughput["presets"]
    assert tiny["preset"] == "tiny" and throughput["environment"]["device"] == "cpu"
    assert all(tiny[stage]["tokens"] > 0 and tiny[stage]["tokens_per_s"] > 0 for stage in ("sft", "prm", "dpo", "kl"))
    assert tiny["agent"]["steps"] > 0 and tiny["agent"]["steps_per_s"] > 0

    rows = read_summary(out / "summary.json")["rows"]
    assert {(r["agent"], r["kind"]) for r in rows} >= {("pi_0", "policy"), ("pi_1", "policy"), ("pi_1", "bon")}
    assert (out / "report.md").read_text().strip()
    with tarfile.open(out / "run_files.tar.gz") as archive:
        members = set(archive.getnames())
    assert {"./config.yaml", "./manifest.json"} <= members
    config = (tmp_path / "work" / "run" / "config.yaml").read_text()
    # the config file's recipe with the toy overrides; the loop in bf16 (a GPU run's precision; slow on a CPU, so
    # only here and at toy size), the throughput in fp32
    assert "preset: tiny" in config and "workers: 0" in config and "precision: bf16" in config
    assert throughput["settings"]["precision"] == "fp32"
    files = list(out.iterdir())  # what the device tool returns: at most 8 plain files
    assert len(files) <= 8 and all(f.is_file() for f in files)
