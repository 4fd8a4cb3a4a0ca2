"""The embedded mode of `make run`: SQLite, the in-process Celery worker and the offline model, in a real
process. The rest of the suite runs on PostgreSQL; the extraction's plain SQL (reviewapp/runstore.py) must
work on both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_embedded_mode_extracts_documents_on_sqlite(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        MEDIA_ROOT=str(tmp_path / "media"),
        SECRET_KEY="embedded-mode-test",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        REVIEWAPP_LLM_CONFIG="",  # the built-in offline model
    )

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    manage("migrate", "-v0")
    manage("seed_demo")
    samples = sorted(str(p) for p in (ROOT / "samples").glob("invoice_*.txt"))[:4]
    out = manage("extract", *samples, "--type", "invoice", "--wait", "--format", "json")
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(results) == len(samples)
    for result in results:
        assert result["status"] in ("auto_accepted", "needs_review"), result
        fields = result["fields"]
        assert fields["invoice_number"]["value"] and 0 <= fields["invoice_number"]["confidence"] <= 1
        statuses = {f["status"] for f in fields.values()}
        assert statuses <= {"auto_accepted", "needs_review"}
        assert ("needs_review" in statuses) == (result["status"] == "needs_review")
