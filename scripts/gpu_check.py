"""GPU readiness: train a preset's identity model for a few minutes on a dev video and report
what a GPU user needs to know before a long build.

    .venv/bin/python scripts/gpu_check.py                        # gpu preset, ~3 minutes of training
    .venv/bin/python scripts/gpu_check.py --minutes 1 --video obama_20s.mp4
    .venv/bin/python scripts/gpu_check.py --preset demo --device cpu --minutes 0.3   # smoke run on a CPU

Reports: device and its name, whether fp16 autocast ran (the engine uses it on CUDA only),
samples/s (in the training steps, and over the whole last call), peak GPU memory, checkpoint +
resume (the run is trained in three calls of the engine, each resuming the checkpoint of the one
before; the report says where each resumed and whether the loss stayed finite), whether it learnt
(the held-out faces' error must fall by a tenth), and a verified export (the trained model as a DFM
ONNX, checked against torch in onnxruntime). Faces come from `--media`/videos/`--video` (default ../shared/media, see
its MANIFEST.md; the embedded sample's identity when the dev media are absent), aligned the way
the faces asset aligns them. Everything is written under `--work`.

`--save-faces FILE.npz` keeps the aligned faces and `--faces FILE.npz` trains on them instead of
detecting again: faces prepared on a machine with MediaPipe can be checked on a GPU box that only
has the training stack (torch, onnxruntime, dagster).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MEDIA = REPO.parent / "shared" / "media"


def face_crops(video: Path | None, size: int, max_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Aligned crops, hull masks and crop-space landmarks of up to ``max_frames`` frames of ``video`` (or the sample)."""
    from facepipe.align import align_face
    from facepipe.landmarks import detect_landmarks
    from facepipe.media import decode_video

    if video is None:
        from facepipe.sample import hopper_face, render_head_video

        video = Path("/tmp") / "facepipe_gpu_check_sample.mp4"
        render_head_video(hopper_face(256), video, n_frames=60, size=256)
    frames = []
    for frame in decode_video(video):
        frames.append(frame)
        if len(frames) == max_frames:
            break
    found = detect_landmarks([(frame, "video") for frame in frames])
    aligned = [align_face(frame, points, size) for frame, points, ok in zip(frames, found.points, found.detected) if ok]
    if len(aligned) < 8:
        sys.exit(f"gpu_check: only {len(aligned)} faces found in {video}; pick another --video")
    return (*(np.stack([a[part] for a in aligned]) for part in range(3)), str(video))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpu", help="preset whose identity model settings are trained (default gpu)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time to aim for")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    parser.add_argument("--video", default="german_news_20s.mp4")
    parser.add_argument("--max-frames", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/facepipe_gpu_check"))
    parser.add_argument("--faces", type=Path, help="train on faces saved by --save-faces instead of detecting them")
    parser.add_argument("--save-faces", type=Path, help="also write the aligned faces to this .npz")
    args = parser.parse_args()

    import safetensors.torch
    import torch

    from facepipe.assets.identity import IdentityModelConfig
    from facepipe.assets.training import CHECKPOINT_SECONDS
    from facepipe.export import export_dfm
    from facepipe.models.swap import DfmSwapModel
    from facepipe.presets import load
    from facepipe.train import TrainConfig, train
    from facepipe.train.device import select_device, uses_mixed_precision
    from facepipe.train.loop import load_saved_weights
    from facepipe.train.tasks.reconstruction import ReconstructionTask

    preset = load(args.preset).ops.get("identity__identity_model", {}).get("config", {})
    settings = IdentityModelConfig(**{k: v for k, v in preset.items() if k != "epochs"})
    model_config = settings.architecture()
    device = select_device(args.device)
    video = args.media / "videos" / args.video
    if args.faces:
        with np.load(args.faces) as saved:
            crops, masks, landmarks, source = saved["crops"], saved["masks"], saved["landmarks"], str(saved["source"])
        if crops.shape[1] != model_config.size:
            sys.exit(f"gpu_check: {args.faces} holds {crops.shape[1]} px faces, the {args.preset} preset trains "
                     f"{model_config.size} px; save them again with --preset {args.preset}")
    else:
        crops, masks, landmarks, source = face_crops(video if video.is_file() else None, model_config.size, args.max_frames)
    if args.save_faces:
        args.save_faces.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.save_faces, crops=crops, masks=masks, landmarks=landmarks, source=source)
    print(f"faces: {len(crops)} from {source} at {model_config.size} px; model {model_config}")

    task = ReconstructionTask.from_faces(crops, masks, model_config, settings.holdout_every, settings.samples_per_epoch,
                                         adversarial=settings.adversarial(), random_warp_epochs=settings.random_warp_epochs,
                                         landmarks=landmarks, eyes_mouth_weight=settings.eyes_mouth_weight,
                                         max_samples_per_epoch=settings.max_samples_per_epoch)
    run_dir = args.work / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    on_cuda = device.type == "cuda"

    def run(epochs: int):
        config = TrainConfig(epochs=epochs, batch_size=settings.batch_size, lr=settings.lr, resume_key="gpu_check",
                             device=str(device), grad_accum_steps=settings.grad_accum_steps,
                             checkpoint_seconds=CHECKPOINT_SECONDS)  # as the assets checkpoint
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        result = train(task, config, run_dir, log=lambda line: print("  " + line))
        return result, time.perf_counter() - started

    # Three calls: the first measures an epoch, the second and third each resume a checkpoint.
    first, seconds = run(1)
    total_epochs = max(3, int(args.minutes * 60 / max(seconds, 1e-3)))
    middle_epochs = max(2, total_epochs // 2)
    middle, _ = run(middle_epochs)
    last, last_seconds = run(total_epochs)
    history = last.history
    epoch_seconds = [entry["seconds"] for entry in history[1:]] or [history[0]["seconds"]]
    samples_per_second = history[-1]["frames_used"] / float(np.median(epoch_seconds))
    # The whole last call (its evaluation, checkpoints and start included) against the steps alone
    # above: where they differ, the time goes outside the training steps.
    wall_samples_per_second = (total_epochs - middle_epochs) * history[-1]["frames_used"] / last_seconds
    finite = all(np.isfinite(entry["loss"]) for entry in history)
    # The held-out faces' error must fall: a run whose every step is skipped (fp16 gradients not
    # finite) keeps its finite loss and resumes fine, and learns nothing.
    learnt = history[-1]["holdout_l1"] < 0.9 * history[0]["holdout_l1"]

    model = task.build_model()
    load_saved_weights(task, model, safetensors.torch.load_file(str(last.weights_path)), last.weights_path)
    exported = export_dfm(DfmSwapModel.from_autoencoders(task.deliverable(model).eval()), model_config.size, args.work / "gpu_check.dfm",
                          list(crops[:4]), card={"name": "gpu_check"})
    report = {
        "device": last.device,
        "device_name": torch.cuda.get_device_name(device) if on_cuda else str(device),
        "fp16_autocast": uses_mixed_precision(device, True),
        "model_size_px": model_config.size,
        "batch_size": settings.batch_size,
        "samples_per_second": round(samples_per_second, 1),
        "wall_samples_per_second": round(wall_samples_per_second, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if on_cuda else None,
        "epochs": total_epochs,
        "resumed_from_epochs": [first.resumed_from_epoch, middle.resumed_from_epoch, last.resumed_from_epoch],
        "loss_first_last": [round(history[0]["loss"], 4), round(history[-1]["loss"], 4)],
        "loss_finite": finite,
        "holdout_l1_first_last": [round(history[0]["holdout_l1"], 4), round(history[-1]["holdout_l1"], 4)],
        "export_parity_max_abs_error": float(f"{exported.max_abs_error:.3g}"),
        "export": str(exported.model_path),
    }
    (args.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    resumed_ok = report["resumed_from_epochs"][1:] == [1, middle_epochs]
    problems = [problem for ok, problem in [(finite, "loss not finite"), (resumed_ok, "a call did not resume its checkpoint"),
                                            (learnt, "the held-out error did not fall by a tenth: nothing was learnt")] if not ok]
    if problems:
        sys.exit("gpu_check: FAILED (" + "; ".join(problems) + ")")
    print("gpu_check: ok")


if __name__ == "__main__":
    main()
