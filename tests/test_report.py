"""The tiny workflow in a container and its HTML report, checked in a real (headless) browser.

One run of the tiny workflow (.test/config) on a real Snakemake with ``--sdm apptainer``: Apptainer
itself is not packaged for Debian, so ``apptainer`` on PATH is a recorder that logs the command line
Snakemake gives it and runs the job's shell command on this machine (the container's part).  That
shows every job's real command: ``apptainer exec`` with the configured image, the bind/GPU arguments
(``--apptainer-args``) and the image's own ``python``.  Then ``snakemake --report`` of the same run
is opened in headless Chromium (Debian package ``chromium``): every table, figure and the results
summary must be reachable through the report's own navigation, and Table 1's page is screenshot.
``snakemake --containerize`` is checked on the same workflow.

Needs chromium (``apt-get install -y chromium``); skipped with the reason otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / ".test" / "config" / "config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)

pytestmark = [
    pytest.mark.report,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install -y chromium"),
]

# What `apptainer` does here: `--version` answers a supported version (Snakemake checks >= 1.0);
# `exec ... IMAGE SHELL -c CMD` logs its arguments and runs `SHELL -c CMD` (in --pwd when given).
RECORDER = '''#!{python}
import json, os, subprocess, sys
args = sys.argv[1:]
if args[:1] in (["--version"], ["version"]):
    print("apptainer version 1.3.6")
    sys.exit(0)
with open(os.environ["NFPI_APPTAINER_LOG"], "a") as fh:
    fh.write(json.dumps({{"args": args, "cwd": os.getcwd()}}) + "\\n")
if "exec" not in args or args[-2] != "-c":
    sys.exit("recorder: unexpected apptainer call: %r" % (args,))
cwd = args[args.index("--pwd") + 1] if "--pwd" in args else None
sys.exit(subprocess.call([args[-3], "-c", args[-1]], cwd=cwd))
'''

# Appended to a copy of the report: drives the report's own menu by clicking, as a reader would
# (category from ?category=, then the entry whose first cell is ?entry=), then marks the body.
NAVIGATE = '''<script>
(async () => {
  const q = new URLSearchParams(location.search);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const byText = (sel, text) => [...document.querySelectorAll(sel)].find((el) => el.textContent.trim() === text);
  await sleep(300);
  const cat = byText("a", q.get("category"));
  if (!cat) { document.body.dataset.nav = "no category " + q.get("category"); return; }
  cat.click();
  await sleep(300);
  if (q.get("entry")) {
    const row = [...document.querySelectorAll("tr")].find((tr) => tr.cells.length && tr.cells[0].textContent.trim() === q.get("entry"));
    if (!row) { document.body.dataset.nav = "no entry " + q.get("entry"); return; }
    row.querySelector("a").click();
    await sleep(300);
  }
  document.body.dataset.nav = "done";
})();
</script>
'''

TABLES = ["Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "Table 6", "latent OT"]
FIGURES = ["Fig. 1 (t-SNE)", "Fig. 2 (NF augmentation)", "training curves", "latent OT samples",
           "flowfactor trajectories"]


def _snakemake(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(SNAKEMAKE + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(cwd.glob("results/*/logs/*.log")))
        raise AssertionError(f"snakemake {' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n"
                             f"{logs[-20000:]}")
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny workflow, every job through `apptainer exec` (the recorder), in a fresh folder.

    ``NFPI_REPORT_WORKDIR=<folder>`` keeps the run there and reuses it when it is complete (to iterate
    on the report checks without rerunning the workflow).
    """
    keep = os.environ.get("NFPI_REPORT_WORKDIR")
    wd = Path(keep) if keep else tmp_path_factory.mktemp("wf")
    shim = wd / "bin"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "apptainer").write_text(RECORDER.format(python=sys.executable))
    (shim / "apptainer").chmod(0o755)
    image = wd / "nfpi.sif"
    image.touch()  # a local SIF path: Snakemake passes it as is (nothing to pull)
    log = wd / "apptainer.jsonl"
    # the recorder runs the jobs here, so the image's `python` is this interpreter
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NFPI_APPTAINER_LOG": str(log),
           "PATH": os.pathsep.join([str(shim), str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    common = ["--configfile", str(TINY), "--config", f"container={image}"]
    done = wd / "snakemake.stderr"
    if not (keep and done.is_file()):
        log.unlink(missing_ok=True)
        proc = _snakemake(["all", "--cores", "2", "--sdm", "apptainer", "--apptainer-args", "--nv --bind /data",
                           *common], wd, env)
        done.write_text(proc.stderr)
    return {"wd": wd, "env": env, "image": image, "log": log, "common": common, "stderr": done.read_text()}


def test_every_job_runs_in_the_configured_image(run: dict) -> None:
    calls = [json.loads(line)["args"] for line in run["log"].read_text().splitlines()]
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", run["stderr"])
    shell_jobs = [r for r in finished if r != "all"]  # `all` only collects inputs: no command
    assert len(shell_jobs) > 50 and len(calls) == len(shell_jobs), (len(calls), len(shell_jobs))
    stages = set()
    for args in calls:
        i = args.index("exec")
        assert args[i + 1 : i + 3] == ["--home", str(run["wd"])], args  # home = the working directory
        assert "--nv" in args and args[args.index("--bind") + 1] == "/data", args  # --apptainer-args
        assert args[-4] == str(run["image"]) and args[-2] == "-c", args  # the configured image, then the shell
        cmd = args[-1]
        m = re.search(r"(?:^|[;&|(]\s*|\s)python -m (?:torch\.distributed\.run .*?-m )?nfpi (\w+)", cmd)
        assert m, f"the job does not start the image's python: {cmd[:300]}"
        assert sys.executable not in cmd, "a host interpreter path leaked into the container command"
        stages.add(m.group(1))
    assert {"prepare", "pretrain", "extract", "solve", "finetune", "evaluate", "tabulate", "tsne", "latent_ot",
            "flowfactor"} <= stages, stages


def test_a_missing_image_fails_before_any_job(run: dict, tmp_path: Path) -> None:
    proc = subprocess.run(SNAKEMAKE + ["all", "-n", "--sdm", "apptainer", "--configfile", str(TINY), "--config",
                                       "container=missing.sif"], cwd=tmp_path, env=run["env"], capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr  # (Snakemake prints a WorkflowError on stdout)
    assert proc.returncode != 0
    assert "missing.sif (config key `container`) does not exist" in out and "apptainer build" in out
    assert "Building DAG" not in out  # before any job is even planned


def test_containerize_names_the_base_and_parses(run: dict) -> None:
    """`snakemake --containerize` (Dockerfile and Apptainer formats) on this workflow: what it can offer.

    Snakemake builds the definition from rules' conda environments only; the workflow's rules have
    none (the image is the project's Dockerfile), so the definition is the base image with
    Snakemake's labels.  Checked: it is produced, names its base image, and is well formed.
    """
    out = _snakemake(["--containerize", *run["common"]], run["wd"], run["env"]).stdout
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("FROM ") and any('io.github.snakemake.containerized="true"' in ln for ln in lines)
    assert all(ln.split()[0] in {"FROM", "LABEL", "RUN", "COPY", "ADD"} for ln in lines), lines
    app = _snakemake(["--containerize", "apptainer", *run["common"]], run["wd"], run["env"]).stdout
    assert re.search(r"^Bootstrap: docker$", app, re.M) and re.search(r"^From: \S+$", app, re.M)
    assert "%labels" in app


def _chromium(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=10000", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def report(run: dict) -> Path:
    wd = run["wd"]
    _snakemake(["all", "--report", "report.html", *run["common"]], wd, run["env"])
    html = (wd / "report.html").read_text(encoding="utf-8")
    nav = wd / "report_nav.html"
    head, tag, tail = html.rpartition("</body>")  # the document's own end (libraries inside hold the string too)
    nav.write_text(head + NAVIGATE + tag + tail, encoding="utf-8")
    return nav


def _open(nav: Path, **query: str) -> str:
    url = nav.as_uri() + "?" + urllib.parse.urlencode(query)
    dom = _chromium(["--dump-dom", url], nav.parent)
    assert 'data-nav="done"' in dom, re.findall(r'data-nav="[^"]*"', dom) or dom[-2000:]
    app = dom[dom.index('<div id="app">'):]
    return app[:app.find("<script")]  # what React rendered (the scripts after it hold the same strings)


def _entries(dom: str) -> set[str]:
    """The first cell of every row of the results list (the entries' labels), as rendered."""
    return {re.sub(r"<[^>]+>", "", m).strip() for m in re.findall(r"<tr[^>]*>\s*<td[^>]*>(.*?)</td>", dom, re.S)}


def test_report_lists_every_table_figure_and_the_summary(report: Path) -> None:
    assert _entries(_open(report, category="Tables")) >= set(TABLES)
    assert _entries(_open(report, category="Figures")) >= set(FIGURES)
    assert _entries(_open(report, category="Samples")) >= {"baseline1", "nfpi"}
    dom = _open(report, category="Summary", entry="Results summary")
    page = _frame_html(dom)
    assert "Headline numbers" in page and "NF-Acc test, NFPI (%)" in page and "NF-Acc test, Baseline 1 (%)" in page
    # the tiny config's NFPI lambda is not in Tables 2-3: the CNN-Acc shown is Table 2's selected lambda's
    assert re.search(r"<td>CNN-Acc test, NFPI[^<]*\(%\)</td><td>\d+\.\d\d</td>", page), page
    assert re.search(r"config hash</td><td>[0-9a-f]{12}<", page)
    assert re.search(r"git revision</td><td>([0-9a-f]{7,}(\+dirty)?|unknown)<", page)


def _frame_html(dom: str) -> str:
    """The page shown in the report's content frame (an embedded data: URI)."""
    m = re.search(r'<iframe[^>]*src="data:text/html[^,]*,([^"]+)"', dom)
    assert m, "no HTML page shown in the report's frame"
    data = m.group(1).replace("&amp;", "&")
    return base64.b64decode(data).decode() if ";base64" in dom[m.start():m.start(1)] else urllib.parse.unquote(data)


def test_table1_page_and_its_screenshot(report: Path) -> None:
    dom = _open(report, category="Tables", entry="Table 1")
    page = _frame_html(dom)
    assert "Table 1: NF-Acc of the baselines and NFPI" in page
    assert re.search(r"<td>NFPI[^<]*</td><td>\d+\.\d\d</td>", page), page[:2000]
    shot = report.parent / "table1.png"
    url = report.as_uri() + "?" + urllib.parse.urlencode({"category": "Tables", "entry": "Table 1"})
    _chromium([f"--screenshot={shot}", "--window-size=1280,720", url], report.parent)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("NFPI_REPORT_SCREENSHOT"):  # keep it (docs/report-table1.png comes from here)
        shutil.copy(shot, os.environ["NFPI_REPORT_SCREENSHOT"])
