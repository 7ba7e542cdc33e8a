import cv2
import numpy as np
import pytest

from facepipe.align import decode_reduction
from facepipe.media import (
    Decoding,
    VideoFrames,
    decode_video,
    FRAME_EXTENSION,
    MediaError,
    extract_frames,
    load_image,
    media_hash,
    probe,
    read_frame,
    sample_positions,
    scan_media,
)


def write_video(path, frames=20, size=64, fourcc="MJPG", fps=25):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (size, size))
    for i in range(frames):
        frame = np.full((size, size, 3), i * 10 % 255, np.uint8)
        cv2.putText(frame, str(i), (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.parametrize("total,cap", [(10, 3), (1250, 1000), (2500, 1000), (1001, 1000), (7, 7), (5, 9)])
def test_sample_positions_cap_is_exact_and_uniform(total, cap):
    picks = sample_positions(total, cap)
    assert len(picks) == min(total, cap)
    assert len(np.unique(picks)) == len(picks) and picks.min() >= 0 and picks.max() < total
    if total > cap:  # spread over the whole range, not bunched at the start
        assert picks.max() >= total - total / cap - 1
        gaps = np.diff(picks)
        assert gaps.max() - gaps.min() <= 1


def test_scan_lists_media_sorted_and_explains_the_rest(tmp_path):
    write_video(tmp_path / "b.avi")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 40, 3), np.uint8))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not media")
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((40, 40), np.uint8))
    files, skipped = scan_media(tmp_path)
    assert [f.rel for f in files] == ["a.png", "b.avi"]
    reasons = {s.rel: s.reason for s in skipped}
    assert "0 bytes" in reasons["empty.mp4"] and "not a media file" in reasons["notes.txt"]
    assert "masks/a.png" not in reasons  # user masks are inputs of XSeg, not media


def test_media_hash_changes_with_content_and_names(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 40, 3), np.uint8))
    before = media_hash(scan_media(tmp_path)[0])
    assert before == media_hash(scan_media(tmp_path)[0])
    cv2.imwrite(str(tmp_path / "a.png"), np.ones((40, 40, 3), np.uint8))
    edited = media_hash(scan_media(tmp_path)[0])
    (tmp_path / "a.png").rename(tmp_path / "c.png")
    assert len({before, edited, media_hash(scan_media(tmp_path)[0])}) == 3


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        scan_media(tmp_path / "nope")


@pytest.mark.parametrize(
    "name,image",
    [
        ("grey.png", np.full((48, 40), 120, np.uint8)),
        ("rgba.png", np.dstack([np.full((48, 40, 3), 90, np.uint8), np.full((48, 40), 7, np.uint8)])),
        ("deep16.png", np.full((48, 40, 3), 40000, np.uint16)),
        ("ünïcödé 顔.jpg", np.full((48, 40, 3), 200, np.uint8)),
        ("photo.webp", np.full((48, 40, 3), 60, np.uint8)),
        ("photo.bmp", np.full((48, 40, 3), 60, np.uint8)),
    ],
)
def test_odd_image_modes_load_as_bgr8(tmp_path, name, image):
    path = tmp_path / name
    ok, encoded = cv2.imencode(path.suffix, image)
    assert ok
    encoded.tofile(str(path))
    loaded = load_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (48, 40, 3)
    if name == "deep16.png":
        assert loaded.max() == 40000 >> 8


def test_tiny_and_corrupt_images_are_rejected_with_the_file_name(tmp_path):
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(MediaError, match="tiny.png.*too small"):
        load_image(tmp_path / "tiny.png")
    (tmp_path / "fake.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(MediaError, match="fake.jpg.*cannot decode"):
        load_image(tmp_path / "fake.jpg")


def test_corrupt_video_is_rejected_with_the_file_name(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    files, _ = scan_media(tmp_path)
    with pytest.raises(MediaError, match="broken.mp4.*cannot decode"):
        probe(files[0])


def test_frames_keep_source_index_and_timestamp(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    write_video(media / "clip.avi", frames=20)
    cv2.imwrite(str(media / "still.png"), np.full((50, 60, 3), 30, np.uint8))
    files, _ = scan_media(media)
    manifest = extract_frames([probe(f) for f in files], 7, tmp_path / "frames")
    assert len(manifest) == 7  # 21 frames in all, exact cap
    assert manifest.frame_id.tolist() == list(range(7))
    video = manifest[manifest.kind == "video"]
    assert video.source_frame_index.is_monotonic_increasing
    assert np.allclose(video.timestamp_s, video.source_frame_index / 25)
    assert all((tmp_path / "frames" / f).is_file() for f in manifest.file)


def test_truncated_video_replans_to_keep_the_cap_exact(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    path = write_video(media / "cut.avi", frames=40)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header still says 40 frames
    files, _ = scan_media(media)
    source = probe(files[0])
    warnings = []
    manifest = extract_frames([source], 30, tmp_path / "frames", warn=warnings.append)
    decodable = sum(1 for _ in decode_video(path))
    assert decodable < 40
    assert len(manifest) == min(30, decodable)
    assert manifest.source_frame_index.max() < decodable
    assert len(list((tmp_path / "frames").glob(f"*{FRAME_EXTENSION}"))) == len(manifest)
    assert source.frame_count == 40  # the header overstates what is there
    assert warnings and "cut.avi" in warnings[0]


def test_sparse_frames_come_from_seeks_and_equal_the_sequential_decode(tmp_path):
    # mp4v (OpenCV's FFmpeg writer) puts a keyframe at least every 12 frames: with every 100th
    # frame wanted, seeking decodes far fewer frames than reading through.
    path = write_video(tmp_path / "long.mp4", frames=400, fourcc="mp4v")
    every = list(decode_video(path))
    wanted = sample_positions(len(every), 4)
    decoding = Decoding()
    got = list(VideoFrames(path, len(every), 25.0, decoding).read(wanted))
    assert [index for index, _ in got] == wanted.tolist()
    assert all(np.array_equal(frame, every[index]) for index, frame in got)
    assert decoding.frame_count == 400  # the count is still checked (last frame decodes, the next does not)
    assert decoding.seeks > 0 and decoding.decoded < 200


def test_dense_frames_are_read_through_and_counted(tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames=40, fourcc="mp4v")
    decoding = Decoding()
    got = list(VideoFrames(path, 40, 25.0, decoding).read(np.arange(0, 40, 2)))
    assert [index for index, _ in got] == list(range(0, 40, 2))
    assert decoding.seeks == 0 and decoding.decoded == 40 and decoding.frame_count == 40


def test_stored_frames_are_jpeg_and_the_same_bytes_on_a_rebuild(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    write_video(media / "clip.mp4", frames=30, fourcc="mp4v")
    sources = [probe(f) for f in scan_media(media)[0]]
    first = extract_frames(sources, 10, tmp_path / "a")
    second = extract_frames(sources, 10, tmp_path / "b")
    assert first.equals(second) and all(name.endswith(".jpg") for name in first.file)
    assert all((tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() for name in first.file)
    bgr = read_frame(tmp_path / "a" / first.file.iat[0])
    assert bgr.shape == (64, 64, 3)
    assert np.array_equal(read_frame(tmp_path / "a" / first.file.iat[0], rgb=True), bgr[..., ::-1])  # same decode, RGB order
    with pytest.raises(MediaError, match="000003.jpg is unreadable"):
        (tmp_path / "a" / "000003.jpg").write_bytes(b"")
        read_frame(tmp_path / "a" / "000003.jpg")


def similarity(scale: float, angle: float = 0.3, centre=(640.0, 360.0)) -> np.ndarray:
    """A 2x3 similarity transform (frame pixels -> 256 px crop) shrinking by `scale`, rotating by
    `angle` and putting the frame's `centre` in the middle of the crop."""
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    linear = np.array([[c, -s], [s, c]])
    return np.hstack([linear, (np.array([128.0, 128.0]) - linear @ np.asarray(centre))[:, None]])


@pytest.mark.parametrize("scale, reduction", [(1.2, 1), (0.6, 1), (0.5, 2), (0.36, 2), (0.25, 4), (0.2, 4), (0.1, 8), (0.01, 8)])
def test_frames_are_decoded_at_the_largest_reduction_the_crop_does_not_enlarge(scale, reduction):
    assert decode_reduction(similarity(scale)) == reduction


def test_a_crop_warped_from_the_reduced_decode_matches_the_full_decode(tmp_path):
    """A 1280x720 JPEG frame with a detailed face warped into a 256 px crop at 0.4 crop px per frame
    px: from the half-size decode the crop differs by under 2 grey levels on average (mostly the
    full-size warp's aliasing, which the reduced decode filters), and only with the reduced pixels'
    centres where they are (r*x + (r-1)/2 in the frame)."""
    from facepipe.align import reduced_matrix, warp_to_crop
    from facepipe.media import write_frame_file
    from facepipe.sample import hopper_face

    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[60:660, 340:940] = cv2.resize(hopper_face(300), (600, 600), interpolation=cv2.INTER_CUBIC)
    write_frame_file(tmp_path / "frame.jpg", frame)
    matrix = similarity(0.4)
    full = warp_to_crop(read_frame(tmp_path / "frame.jpg"), matrix, 256).astype(np.int16)
    half = read_frame(tmp_path / "frame.jpg", reduction=2)
    assert half.shape == (360, 640, 3)
    from_half = warp_to_crop(half, reduced_matrix(matrix, 2), 256).astype(np.int16)
    uncentred = warp_to_crop(half, matrix @ np.diag([2.0, 2.0, 1.0]), 256).astype(np.int16)
    assert np.abs(full - from_half).mean() < 2.0
    assert np.abs(full - from_half).mean() < 0.6 * np.abs(full - uncentred).mean()
