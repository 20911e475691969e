"""The HTML report in a real browser (Debian's Chromium, headless, over the DevTools
protocol): every chart is drawn, no console error, and a PNG screenshot is saved."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CHARTS = {
    "funnel",
    "dropoffs",
    "flow",
    "heatmap-interact",
    "heatmap-click",
    "heatmap-book",
    "attribution",
    "weekly",
}


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium; installed with apt-get if this machine does not have it yet."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            check=False,
            capture_output=True,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.fail("Debian's chromium is not installed and could not be installed with apt-get")
    return found


def touchpoint(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOUCHPOINT_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "touchpoint", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


async def inspect(browser: str, page: Path, screenshot: Path, profile: Path) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        endpoint = ""
        while not endpoint:
            line = (await asyncio.wait_for(process.stderr.readline(), timeout=60)).decode()
            if not line:
                raise RuntimeError("chromium exited before its DevTools endpoint was up")
            if "DevTools listening on " in line:
                endpoint = line.split("DevTools listening on ", 1)[1].strip()
        port = endpoint.split(":")[2].split("/")[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            target = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                return await _drive(ws, page, screenshot)
    finally:
        process.terminate()
        await process.wait()


async def _drive(ws: Any, page: Path, screenshot: Path) -> dict[str, Any]:
    counter = 0
    errors: list[str] = []
    loaded = asyncio.Event()
    pending: dict[int, asyncio.Future[Any]] = {}

    async def listen() -> None:
        async for message in ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in pending:
                pending.pop(data["id"]).set_result(data.get("result", data.get("error")))
            method = data.get("method")
            params = data.get("params", {})
            if method == "Page.loadEventFired":
                loaded.set()
            elif method == "Runtime.exceptionThrown":
                errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(json.dumps(params.get("args", []))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", "")[:500])

    async def call(method: str, **params: Any) -> Any:
        nonlocal counter
        counter += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending[counter] = future
        await ws.send_str(json.dumps({"id": counter, "method": method, "params": params}))
        return await asyncio.wait_for(future, timeout=60)

    listener = asyncio.create_task(listen())
    try:
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            await call(domain)
        await call("Page.navigate", url=page.as_uri())
        await asyncio.wait_for(loaded.wait(), timeout=60)
        evaluated = await call(
            "Runtime.evaluate",
            returnByValue=True,
            expression="JSON.stringify(Array.from(document.querySelectorAll('svg[data-chart]'))"
            ".map(s => [s.dataset.chart, s.querySelectorAll('rect,path,circle,line')"
            ".length, s.getBoundingClientRect().width]))",
        )
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        await asyncio.sleep(0.2)  # late console messages
        return {"charts": json.loads(evaluated["result"]["value"]), "errors": errors}
    finally:
        listener.cancel()


def test_the_html_report_draws_every_chart_without_console_errors(
    tmp_path: Path, chromium: str
) -> None:
    demo = touchpoint(tmp_path, "demo", "--buyers", "400", "--seed", "5")
    assert demo.returncode == 0, demo.stderr
    report = touchpoint(tmp_path, "report", "--by", "persona", "--html", "out/report.html")
    assert report.returncode == 0, report.stderr
    page = tmp_path / "out" / "report.html"
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in text and "https://" not in text  # nothing loaded from the network

    screenshot = tmp_path / "report.png"
    result = asyncio.run(inspect(chromium, page, screenshot, tmp_path / "profile"))
    drawn = {name: (shapes, width) for name, shapes, width in result["charts"]}
    assert set(drawn) == CHARTS
    for name, (shapes, width) in drawn.items():
        assert shapes > 0 and width > 0, f"chart {name} is empty"
    assert result["errors"] == []
    assert screenshot.stat().st_size > 50_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kept = REPO / ".cache" / "report-screenshot.png"  # for people to look at (git-ignored)
    kept.parent.mkdir(exist_ok=True)
    shutil.copy(screenshot, kept)
