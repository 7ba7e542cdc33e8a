"""Builds the embedded sample data: synthetic talking-head clips of two public-domain faces.

The pipeline needs an identity and a target to run end to end without any user media, and its
tests need short clips whose ground truth is known. Both come from the two public-domain photos
that ship inside installed dependencies: Grace Hopper (matplotlib, US Navy photo) and Eileen
Collins (scikit-image's ``astronaut``, NASA photo). Nothing is downloaded.

Each frame is the face photo re-rendered with a head pose, an in-plane motion and a lighting:

* out-of-plane turns (yaw/pitch): the face crop is treated as a plane through the face centre,
  rotated in 3D and projected with a pinhole camera (a homography), plus a smooth depth relief
  (head dome + nose ridge) rotated with it, so the nose really moves relative to the eyes the way
  it does in a turning head (a pure plane keeps the nose between the eyes);
* in-plane motion: a small shift, roll and scale;
* lighting: gain, gamma and a coloured linear gradient whose direction drifts over time;
* for the target, moving occluders (a hand, a microphone) drawn over part of the face in part of
  the frames, never covering more than ``MAX_FACE_COVERAGE`` of the face so FaceMesh still finds it.

Layout written by ``build_sample(data_root)``::

    data_root/identities/hopper/hopper_turn.mp4        25 fps, 75 frames, 352x352
    data_root/identities/hopper/hopper_left.jpg        still, turned left, warm light
    data_root/identities/hopper/hopper_up.png          still, looking up, cool light
    data_root/targets/astronaut/astronaut_talk.mp4     25 fps, 100 frames, hand + microphone
    data_root/targets/astronaut/astronaut_mic.jpg      still with a microphone in front
    data_root/targets/astronaut/astronaut_side.png     still, turned, no occluder
    data_root/sample_truth/astronaut/occluders.npz     ground-truth occluder masks

``occluders.npz`` holds one array per file of the target folder, keyed by the file name
(``"astronaut_talk.mp4"``, ``"astronaut_mic.jpg"``, ...): uint8 of shape
``[n_frames, height, width]`` with values {0, 1} (1 = occluder pixel) at the full frame resolution;
row ``i`` is the mask of frame ``i`` in decoding order (stills have one row). So the mask of
(file, frame) is ``np.load(path)[file][frame]``. It lives outside the partition folders on purpose:
it is ground truth for evaluating XSeg, not media.

Every file is written atomically (temporary file in the same folder, then ``os.replace``) and only
when its bytes change, so rebuilding leaves modification times and the media content hash alone.
Rendering is deterministic (seeded numpy generators, no threads racing on shared state) and the
writers are too: 'mp4v' through OpenCV's FFmpeg backend runs single-threaded with no time stamps in the
file, JPEG/PNG encoding is deterministic, and the npz is zipped with fixed member dates.

Modules, one job each: ``faces`` (source photos and face crops), ``head`` (pose, relief projection,
pose trajectory), ``lighting``, ``occluders`` (sprites, schedule, placement), ``render`` (frames and
clips), ``files`` (stills, occluder truth, user masks) and ``build`` (the sample, ``build_sample``,
``main``; also ``python -m facepipe.sample``). The mp4 writer is ``facepipe.media.write_video``.
"""

from facepipe.sample.build import IDENTITY_KEY, TARGET_KEY, build_sample, main
from facepipe.sample.faces import (
    SAMPLE_FRAME_SIZE,
    astronaut_face,
    astronaut_image,
    face_crop,
    hopper_face,
    hopper_image,
)
from facepipe.sample.files import load_occluder_masks
from facepipe.sample.head import HeadPose
from facepipe.sample.lighting import Lighting
from facepipe.sample.occluders import OccluderPlacement, make_sprites
from facepipe.sample.render import SAMPLE_FPS, render_frame, render_head_frames, render_head_video

__all__ = [
    "IDENTITY_KEY",
    "SAMPLE_FPS",
    "SAMPLE_FRAME_SIZE",
    "TARGET_KEY",
    "HeadPose",
    "Lighting",
    "OccluderPlacement",
    "astronaut_face",
    "astronaut_image",
    "build_sample",
    "face_crop",
    "hopper_face",
    "hopper_image",
    "load_occluder_masks",
    "main",
    "make_sprites",
    "render_frame",
    "render_head_frames",
    "render_head_video",
]
