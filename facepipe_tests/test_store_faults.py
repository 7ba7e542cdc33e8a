"""The store under faults: read-only (cache hits still work; a build says so once, no retry),
full (named with MB needed and free, no retry, nothing left behind), and damaged outputs
(never served: a cache hit checks presence and sizes, `facepipe verify` checks content)."""

from __future__ import annotations

import cv2
import pytest

from facepipe.assets.failures import RETRY_DELAY_ENV


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setenv(RETRY_DELAY_ENV, "0")


def events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def a_face_image(path) -> None:
    from facepipe.sample import hopper_face

    cv2.imwrite(str(path), hopper_face(160))


def media_and_frames(project, role="identity"):
    return project.assets[role][:2]


def test_a_read_only_store_serves_cache_hits_and_a_build_fails_once_naming_it(project, read_only):
    folder = project.folder("identity", "jane")
    a_face_image(folder / "a.jpg")
    assert project.materialize("identity", "jane", assets=media_and_frames(project)).success
    read_only(project.store)
    hits = project.materialize("identity", "jane", assets=media_and_frames(project))  # current.json was rewritten
    assert hits.success
    assert [e.event_specific_data.materialization.metadata["cache"].value for e in events(hits, "ASSET_MATERIALIZATION")] \
        == ["hit", "hit"]
    a_face_image(folder / "b.jpg")  # new media: the media step must build, in a store it cannot write
    failed = project.materialize("identity", "jane", assets=media_and_frames(project), raise_on_error=False)
    assert not failed.success and not events(failed, "STEP_UP_FOR_RETRY")  # was retried as "transient"
    [failure] = events(failed, "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert f"identity/media [jane]: cannot write in the store at {project.store}: " in message
    assert "make it writable or set FACEPIPE_STORE to a writable folder" in message
