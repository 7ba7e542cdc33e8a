"""The Dagster web UI in a real browser (headless Chromium from the OS packages, Selenium with
the system chromedriver; nothing downloads a browser).

The test starts `dagster dev -w workspace.yaml` on a free loopback port, over a throwaway
instance (the project's dagster.yaml) and throwaway data/store/models folders holding a few
frames of sample video. It checks that the global asset graph shows every asset of
`facepipe.definitions.defs`, then launches the identity data-preparation assets for one
partition by clicking through the UI ("Materialize all…", partition, "Launch 1 run"), waits for
the run to succeed, and saves screenshots.

FACEPIPE_AUTOMATION=off keeps the project's sensors and schedules stopped (the media sensor
would otherwise register the sample and request a full build, model training included), so the
only run is the one the test launches; the test checks that they are indeed stopped.
"""

import collections
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from facepipe.sample import astronaut_face, hopper_face, render_head_video  # noqa: E402
from facepipe_tests.processes import PROJECT, free_loopback_port, log_tail, start_process, stop_process_tree  # noqa: E402

PARTITION = "hopper"
# The identity data-preparation chain: faces and everything upstream of it.
PREP_SELECTION = '+key:"identity/faces"'
PREP_ASSETS = {"identity/media", "identity/frames", "identity/landmarks", "identity/smoothed_landmarks", "identity/faces"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000"]


class DagsterServer:
    """`dagster dev` (webserver + daemon) over a throwaway instance and throwaway folders."""

    def __init__(self, root: Path):
        self.root = root
        self.home, self.data, self.store, self.models = (root / n for n in ("dagster_home", "data", "store", "models"))
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = {"dev": root / "dagster-dev.log"}
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home), "FACEPIPE_DATA": str(self.data),
                    "FACEPIPE_STORE": str(self.store), "FACEPIPE_MODELS": str(self.models),
                    "FACEPIPE_AUTOMATION": "off", "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}

    def command(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)  # the console scripts of this environment

    def start(self) -> None:
        args = [self.command("dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)]
        self.processes["dev"] = start_process(args, self.env, self.logs["dev"])

    def stop(self) -> None:
        for process in self.processes.values():
            stop_process_tree(process)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(f"{self.url}/graphql", json.dumps({"query": query, "variables": variables or {}}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert "errors" not in answer, answer["errors"]
        return answer["data"]

    def wait_until(self, what: str, ready, timeout: float):
        """Poll `ready()` until it returns something truthy (returned), failing early if a server died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                assert process.poll() is None, f"dagster {name} exited ({process.returncode}):\n{log_tail(self.logs[name])}"
            try:
                if value := ready():
                    return value
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        logs = "\n".join(f"--- {name}\n{log_tail(path)}" for name, path in self.logs.items())
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


WORKSPACE_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message }
    ... on RepositoryLocation { repositories { name
      sensors { name sensorState { id status } } schedules { name scheduleState { id status } } } } } } } } }"""


def workspace_repositories(server: DagsterServer) -> list[dict] | None:
    entries = server.graphql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
    if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
        return None
    for entry in entries:
        location = entry["locationOrLoadError"]
        assert location["__typename"] == "RepositoryLocation", f"code location {entry['name']} failed to load: {location}"
    return [repo for entry in entries for repo in entry["locationOrLoadError"]["repositories"]]


def running_automation(repositories: list[dict]) -> list[str]:
    return [item["name"] for repo in repositories for kind, state in (("sensors", "sensorState"), ("schedules", "scheduleState"))
            for item in repo[kind] if item[state]["status"] == "RUNNING"]


def partition_runs(server: DagsterServer) -> list[dict]:
    query = """query($value: String!) { runsOrError(filter: {tags: [{key: "dagster/partition", value: $value}]}) {
      ... on Runs { results { runId status assetSelection { path } } } } }"""
    return server.graphql(query, {"value": PARTITION})["runsOrError"]["results"]


def open_browser(profile: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager (which could download one) is never consulted.
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def asset_node_names(browser) -> list[str]:
    return [node.text for node in browser.find_elements(By.CSS_SELECTOR, "foreignObject [class*='AssetNode_assetName']")]


def materialized_node_names(browser) -> list[str]:
    """Names of the asset nodes drawn in the "materialized" colour (green)."""
    boxes = browser.find_elements(By.CSS_SELECTOR, "foreignObject [class*='AssetNode_minimalAssetNodeBox']")
    return sorted(box.text for box in boxes if "green" in (box.get_attribute("style") or ""))


def expand_all_groups(browser, wait) -> None:
    """The graph's settings menu → "Expand all groups" (groups start collapsed in a graph this size)."""
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#zoom-slider-container button:has([aria-label=settings])"))).click()
    wait.until(EC.element_to_be_clickable((By.XPATH, "//*[@role='menuitem'][contains(., 'Expand all groups')]"))).click()


def launch_partition_from_ui(browser, wait, selection: str, partition: str, screenshots: Path) -> None:
    """Filter the graph to `selection`, then Materialize all… → Custom partition → Launch 1 run."""
    search = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "textarea[aria-label='Search and filter assets']")))
    search.send_keys(selection)
    search.send_keys(Keys.ENTER)
    wait.until(lambda b: len(asset_node_names(b)) == len(PREP_ASSETS))
    wait.until(EC.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Materialize all…']"))).click()
    dialog = wait.until(EC.visibility_of_element_located((By.XPATH, "//*[@role='dialog'][contains(., 'Partition selection')]")))
    dialog.find_element(By.XPATH, ".//div[normalize-space()='Select a partition or create one']").click()
    wait.until(EC.element_to_be_clickable((By.XPATH, f"//*[@role='dialog']//span[normalize-space()='{partition}']"))).click()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)  # close the partition picker, keep the dialog
    browser.save_screenshot(str(screenshots / "launch_dialog.png"))
    wait.until(EC.element_to_be_clickable((By.XPATH, "//*[@role='dialog']//button[normalize-space()='Launch 1 run']"))).click()


@pytest.fixture
def server(tmp_path):
    server = DagsterServer(tmp_path)
    server.home.mkdir()
    shutil.copy(PROJECT / ".dagster_home" / "dagster.yaml", server.home / "dagster.yaml")
    render_head_video(hopper_face(160), server.data / "identities" / PARTITION / "hopper.mp4", n_frames=6, size=160)
    # A target too, never built: the final screenshot then contrasts built and missing assets.
    render_head_video(astronaut_face(160), server.data / "targets" / "astronaut" / "talk.mp4", n_frames=6, size=160)

    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(server.home)) as instance:  # what `facepipe register` does
        instance.add_dynamic_partitions("identity", [PARTITION])
        instance.add_dynamic_partitions("target", ["astronaut"])
    try:
        yield server
    finally:
        server.stop()


def test_asset_graph_shows_every_asset_and_materializes_a_partition_from_the_ui(server, tmp_path):
    from facepipe.definitions import defs

    asset_keys = sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())
    started = time.monotonic()
    server.start()
    repositories = server.wait_until("dagster dev to load workspace.yaml", lambda: workspace_repositories(server), timeout=120)
    assert running_automation(repositories) == [], "FACEPIPE_AUTOMATION=off should leave sensors and schedules stopped"
    server.graphql("mutation { setNuxSeen }")  # the first-visit newsletter prompt would cover the graph
    print(f"dagster dev ready in {time.monotonic() - started:.1f}s on {server.url}")

    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    browser = open_browser(tmp_path / "chromium-profile")
    wait = WebDriverWait(browser, 30)
    try:
        browser.get(f"{server.url}/asset-groups")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#zoom-slider-container")))
        expand_all_groups(browser, wait)
        wait.until(lambda b: len(asset_node_names(b)) == len(asset_keys))
        # Nodes are labelled with the key's last part under their group (identity/, target/, pair/).
        expected = collections.Counter(key.split("/")[-1] for key in asset_keys)
        assert collections.Counter(asset_node_names(browser)) == expected
        assert "/asset-groups?expanded=" in browser.current_url
        labels = {element.text for element in browser.find_elements(By.CSS_SELECTOR, "foreignObject")}
        assert {"identity", "target", "pair"} <= labels, f"group boxes missing from {sorted(labels)}"
        browser.save_screenshot(str(screenshots / "asset_graph_before.png"))

        launch_partition_from_ui(browser, wait, PREP_SELECTION, PARTITION, screenshots)
        server.wait_until("the run launched from the UI to appear", lambda: len(partition_runs(server)) == 1, timeout=30)
        server.wait_until("the run launched from the UI to finish",
                          lambda: partition_runs(server)[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"), timeout=180)
        run = partition_runs(server)[0]
        assert run["status"] == "SUCCESS", f"run {run['runId']} {run['status']}: see {server.url}/runs/{run['runId']}"
        assert {"/".join(key["path"]) for key in run["assetSelection"]} == PREP_ASSETS
        assert (server.store / "identity" / "faces" / PARTITION / "current.json").is_file()  # real artifacts, in our store
        browser.get(f"{server.url}/runs/{run['runId']}")
        wait.until(EC.presence_of_element_located((By.XPATH, "//*[normalize-space()='Success']")))
        browser.save_screenshot(str(screenshots / "run.png"))

        # The whole graph again, now with the materialized partition.
        browser.get(f"{server.url}/asset-groups")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#zoom-slider-container")))
        if len(asset_node_names(browser)) != len(asset_keys):
            expand_all_groups(browser, wait)
        wait.until(lambda b: len(asset_node_names(b)) == len(asset_keys))
        # The graph shows what was built: the five preparation assets of the identity, nothing else.
        prep_names = sorted(key.split("/")[-1] for key in PREP_ASSETS)
        try:
            wait.until(lambda b: materialized_node_names(b) == prep_names)
        finally:
            browser.save_screenshot(str(screenshots / "asset_graph.png"))
    except BaseException:
        browser.save_screenshot(str(screenshots / "failure.png"))
        print(f"failure screenshot: {screenshots / 'failure.png'}")
        raise
    finally:
        browser.quit()
    print(f"screenshots: {screenshots} (asset_graph.png, asset_graph_before.png, launch_dialog.png, run.png); "
          f"run {run['runId']} succeeded; total {time.monotonic() - started:.1f}s")
