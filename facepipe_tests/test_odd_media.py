"""Odd files in a media folder: symbolic-link loops, dangling links, undecodable and unreadable
files are each one line naming the file, never a traceback; the media step and the nightly's
decision agree about which files count."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from facepipe.automation.nightly import World, role_changes
from facepipe.media import scan_media
from facepipe.resources import FacepipeSettings



def a_face_image(path: Path) -> None:
    from facepipe.sample import hopper_face

    cv2.imwrite(str(path), hopper_face(160))


def odd_links(folder: Path) -> None:
    """A good image, a two-link loop, a link to a missing file inside the folder and one outside."""
    a_face_image(folder / "good.jpg")
    os.symlink("loop1.jpg", folder / "loop2.jpg")
    os.symlink("loop2.jpg", folder / "loop1.jpg")
    os.symlink("missing.jpg", folder / "dangling.jpg")
    os.symlink("/nonexistent/clip.mp4", folder / "gone.mp4")


def test_link_loops_and_dangling_links_are_skipped_with_a_reason(tmp_path):
    odd_links(tmp_path)
    files, skipped = scan_media(tmp_path)
    assert [f.rel for f in files] == ["good.jpg"]
    assert {s.rel: s.reason for s in skipped} == {
        "dangling.jpg": "symbolic link to missing.jpg, which does not exist: remove the link or copy the file in",
        "gone.mp4": "symbolic link to /nonexistent/clip.mp4, which does not exist: remove the link or copy the file in",
        "loop1.jpg": "symbolic link loop (it leads back to itself): remove it",
        "loop2.jpg": "symbolic link loop (it leads back to itself): remove it",
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_skipped_naming_it(tmp_path):
    a_face_image(tmp_path / "good.jpg")
    a_face_image(tmp_path / "locked.jpg")
    (tmp_path / "locked.jpg").chmod(0)
    files, skipped = scan_media(tmp_path)
    assert [f.rel for f in files] == ["good.jpg"]
    assert [str(s) for s in skipped] == ["locked.jpg: cannot read it (Permission denied): give yourself read access (chmod u+r)"]


def media_only(project, role: str, key: str):
    return project.materialize(role, key, assets=[project.assets[role][0]], raise_on_error=False)


def warnings_of(project, result) -> list[str]:
    return [entry.user_message for entry in project.instance.all_logs(result.run_id)
            if entry.level >= 30 and entry.user_message.startswith("skipping")]


def world_of(project) -> World:
    return World.from_settings(FacepipeSettings(data_root=str(project.data), store_root=str(project.store),
                                                models_root=str(project.models)), {})


def test_the_media_step_and_the_nightly_survive_odd_links(project):
    folder = project.folder("identity", "links")
    odd_links(folder)
    result = media_only(project, "identity", "links")
    assert result.success
    assert warnings_of(project, result) == [
        f"skipping {folder}/dangling.jpg: symbolic link to missing.jpg, which does not exist: remove the link or copy the file in",
        f"skipping {folder}/gone.mp4: symbolic link to /nonexistent/clip.mp4, which does not exist: remove the link or copy the file in",
        f"skipping {folder}/loop1.jpg: symbolic link loop (it leads back to itself): remove it",
        f"skipping {folder}/loop2.jpg: symbolic link loop (it leads back to itself): remove it",
    ]
    changes = role_changes(world_of(project), "identity", "links")  # used to raise RuntimeError: Symlink loop
    assert "identity/media" not in changes and changes["identity/frames"] == "no output yet"


def test_a_folder_with_an_undecodable_file_is_not_changed_every_night(project):
    """The nightly hashed every media-named file, the media step only the decodable ones, so a
    folder holding one broken file looked changed every night."""
    folder = project.folder("target", "broken")
    a_face_image(folder / "good.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 10)
    assert media_only(project, "target", "broken").success
    world = world_of(project)
    assert "target/media" not in role_changes(world, "target", "broken")
    # the broken file replaced by a good one is a change, seen by both
    shutil.copy(folder / "good.jpg", folder / "broken.jpg")
    assert role_changes(world_of(project), "target", "broken")["target/media"] == "media changed"
    result = media_only(project, "target", "broken")
    assert result.success and "target/media" not in role_changes(world_of(project), "target", "broken")


def small_png_claiming(path: Path, width: int, height: int) -> None:
    """A valid PNG of one flat colour: a few hundred KB on disk, width x height x 3 bytes decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def test_a_small_file_claiming_a_huge_image_is_refused_before_decoding(project):
    """A 420 KB PNG of 12000x12000 px was decoded in full (432 MB; gigapixels cost GBs), twice."""
    import resource

    folder = project.folder("identity", "huge")
    a_face_image(folder / "face.jpg")
    small_png_claiming(folder / "poster.png", 12000, 12000)
    assert (folder / "poster.png").stat().st_size < 1 << 20
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = media_only(project, "identity", "huge")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert result.success and grown_mb < 200, grown_mb
    assert warnings_of(project, result) == [
        f"skipping {folder}/poster.png: poster.png: 12000x12000 px (144 megapixels), more than facepipe decodes "
        "(at most 64 megapixels): scale it down (a face needs far fewer pixels) and put it back"]


def test_frames_with_several_faces_are_named_in_the_run_log(project):
    """The largest face was kept silently (only a count in the metadata)."""
    from facepipe.sample import hopper_face

    folder = project.folder("identity", "crowd")
    face = hopper_face(160)
    group = np.full((200, 400, 3), 128, dtype=np.uint8)
    group[20:180, 10:170] = face
    group[60:160, 260:360] = cv2.resize(face, (100, 100))  # somebody smaller beside the subject
    cv2.imwrite(str(folder / "group.png"), group)
    cv2.imwrite(str(folder / "alone.png"), face)
    landmarks = project.assets["identity"][2]
    result = project.materialize("identity", "crowd", assets=[*project.assets["identity"][:2], landmarks])
    assert result.success
    lines = [entry.user_message for entry in project.instance.all_logs(result.run_id)
             if entry.level >= 30 and "more than one face" in entry.user_message]
    assert lines == ["group.png: 1 frame(s) show more than one face (frame 0: 2 faces); the largest is kept. If that is "
                     "not always the person of this folder, crop or remove those frames"]
    [event] = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
               and e.event_specific_data.materialization.asset_key.to_user_string() == "identity/landmarks"]
    metadata = event.event_specific_data.materialization.metadata
    assert metadata["multi_face_frames"].value == 1 and metadata["multi_face_frames_by_source"].value == {"group.png": 1}
