"""The swap model in the DFM convention and running it on aligned crops.

DFM convention (DeepFaceLive; FaceFusion's ``deep_swapper`` loads ``.dfm`` files from
``.assets/models/custom/``): one input ``in_face:0`` float32 NHWC [1, S, S, 3], BGR in [0, 1];
outputs in this order: ``out_face_mask:0`` [1, S, S, 1] (the input face's mask),
``out_celeb_face:0`` [1, S, S, 3] BGR in [0, 1], ``out_celeb_face_mask:0`` [1, S, S, 1].
An optional second input ``morph_value:0`` float32 [1] (a pair model's export has it: 0 the
target's own face, 1 the full swap) is what both runtimes look for: DeepFaceLive's DFMModel
takes a second input whose name holds ``morph_value`` and shows its morph control (starting at
0.75), FaceFusion's deep_swapper feeds ``morph_value:0`` by name from its morph option (default
100 → 1.0). Crops are aligned to the ``dfl_whole_face`` template (facepipe.align). ``swap_faces`` feeds a
module exactly the way the exported file is fed, so what the evaluation and the previews show
is what a runtime gets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.faces import resize_crops
from facepipe.models.losses import gaussian_taps, separable_blur

DFM_INPUT = "in_face:0"
DFM_OUTPUTS = ("out_face_mask:0", "out_celeb_face:0", "out_celeb_face_mask:0")
DFM_MORPH_INPUT = "morph_value:0"


def _to_nhwc(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 2, 3, 1)


FILL_ERODE = 1 / 48  # of the crop side: the rim of the face the decoder paints into the background
FILL_SIGMA = 1 / 16  # of the crop side: how far the face's colours spread outward
FILL_FLOOR = 0.1  # mask values under this give no colour to the fill


SHARPEN_SIGMA = 1 / 96  # of the crop side: the unsharp mask's blur, 1 px at the default 96 px
# The pair export's low-pass on the crop it is fed (px at the model's size; DfmSwapModel's
# ``input_blur``). Why: the runtimes warp the frame straight to the model's size (bilinear, no
# anti-aliasing) and FaceFusion sharpens that, so at 96 px their crops carry 2.5-4x (plain) and
# ~10x (FaceFusion) the variance of the Laplacian of what the encoder learnt from (the stored
# crops shrunk with INTER_AREA, then resampled by the augmentation): measured on the held-out
# frames of mead, obama and vox. A Gaussian of 0.7 px brings FaceFusion's crops back to the
# training inputs' sharpness (plain ones to a little under it). docs/swap_quality.md.
INPUT_BLUR_PX = 0.7


def _gaussian_blur(image: torch.Tensor, sigma: float, edge: bool = False) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W] (3 sigma each side), zero outside the image or,
    with ``edge``, its border pixels repeated."""
    radius = max(1, int(round(3 * sigma)))
    return separable_blur(image, gaussian_taps(2 * radius + 1, sigma), "replicate" if edge else "zeros")


def unsharp(bgr: torch.Tensor, amount: float) -> torch.Tensor:
    """[N, 3, S, S] in [0, 1] → bgr + amount · (bgr − blur(bgr)), clipped to [0, 1]: the unsharp
    mask DeepFaceLab's merger (blursharpen, gaussian) and faceswap's converter apply to the face
    they paste. Blur σ = ``SHARPEN_SIGMA`` of the crop side, the border repeated (no rim)."""
    blurred = _gaussian_blur(bgr, SHARPEN_SIGMA * int(bgr.shape[-1]), edge=True)
    return (bgr + amount * (bgr - blurred)).clamp(0, 1)


def fill_outside_mask(bgr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The face [N, 3, S, S] with everything outside its mask [N, 1, S, S] (eroded by
    ``FILL_ERODE``) replaced by the face's own colours spread outward (normalised convolution:
    blur(face · mask) / blur(mask), fading to the face's mean colour far from it).

    Why: the decoder is trained on the face alone, so outside the mask it paints whatever its
    weights give — on a real pair the identity's studio backdrop (blue at the jaw of kim -> mead)
    and the upsampler's grid — and its rim carries a line of that backdrop. A runtime pastes
    through a blurred mask whose soft edge reaches a few pixels outside the face: there it now
    blends skin of the face's own colour, not a colour cast."""
    size = int(bgr.shape[-1])  # static in an export (the DFM input has a fixed size)
    radius = max(1, int(round(FILL_ERODE * size)))
    keep = -F.max_pool2d(-mask, 2 * radius + 1, stride=1, padding=radius)  # erosion (min filter)
    # The colours spread from the face proper: a sigmoid mask is never quite 0 outside, and summed
    # over the whole backdrop those traces would tint the fill. Continuous (no threshold), so the
    # exported graph and torch, a rounding apart, give the same fill.
    face = ((keep - FILL_FLOOR) / (1 - FILL_FLOOR)).clamp(0, 1)
    sigma = FILL_SIGMA * size
    eps = 1e-3  # where the blurred mask is this thin, the face's mean colour takes over
    mean = (bgr * face).sum(dim=(2, 3), keepdim=True) / face.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    spread = (_gaussian_blur(bgr * face, sigma) + eps * mean) / (_gaussian_blur(face, sigma) + eps)
    return bgr * keep + spread * (1 - keep)


class DfmSwapModel(nn.Module):
    """A swap model in the DFM convention: NHWC BGR [0, 1] in, (face mask, celeb face, celeb
    mask) out, all NHWC in [0, 1].

    ``encoder_part``: NCHW BGR [0, 1] → code; ``decoder_part``: code → (BGR [0, 1], mask logits)
    (for the identity autoencoder: encoder + bottleneck, and decoder; see ``from_autoencoders``).
    ``face_mask_source``: optional module NCHW BGR [0, 1] → [N, 1, S, S] mask probabilities of
    the input face (e.g. an XSeg resized to S). Without one, ``out_face_mask:0`` is the mask
    the model predicts for its output from this input — the same face silhouette, in the
    input's pose, as ``out_celeb_face_mask:0``.
    ``takes_morph``: ``decoder_part`` also takes the morph value ([1] tensor) and the model has
    the second input ``morph_value:0``; called without one (``swap_faces``, the evaluation) it
    is the full swap, morph 1.
    ``fill_background``: ``out_celeb_face:0`` outside its mask is the face's colours spread
    outward (``fill_outside_mask``) instead of what the decoder paints there. On for the pair
    exports; the identity model's own export leaves it off, as changing it would retrain every
    identity model (its code version is in the training's resume key).
    ``sharpen``: the unsharp mask's amount on ``out_celeb_face:0`` (``unsharp``, after the fill;
    0: none), so that every runtime shows the face as sharp as the export decided.
    ``input_blur``: σ in px of a Gaussian (border repeated) on the input crop before anything reads
    it (0: none); see ``INPUT_BLUR_PX``.
    ``colour_gain``: per-channel (B, G, R) factors on ``out_celeb_face:0`` before the fill and the
    sharpening (None: none), taken by the morph value's share with ``takes_morph`` (at 0 the target's
    own face, already in its colours): the target's skin tone and light (facepipe.skin_tone).
    """

    def __init__(self, encoder_part: nn.Module, decoder_part: nn.Module, face_mask_source: nn.Module | None = None,
                 takes_morph: bool = False, fill_background: bool = False, sharpen: float = 0.0,
                 input_blur: float = 0.0, colour_gain: tuple[float, float, float] | None = None):
        super().__init__()
        self.encoder_part = encoder_part
        self.decoder_part = decoder_part
        self.face_mask_source = face_mask_source
        self.takes_morph = takes_morph
        self.fill_background = fill_background
        self.sharpen = float(sharpen)
        if not input_blur >= 0:
            raise ValueError(f"input_blur is the sigma (px) of the Gaussian on the input crop: 0 (off) or more, "
                             f"got {input_blur}; set pair__onnx_export's input_blur in run config accordingly")
        self.input_blur = float(input_blur)
        # A buffer, so that it moves with the module to the model's device; not in the state dict.
        self.register_buffer("colour_gain", None if colour_gain is None else
                             torch.tensor(colour_gain, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_autoencoders(
        cls, encoding_model: nn.Module, decoding_model: nn.Module | None = None, face_mask_source: nn.Module | None = None,
        fill_background: bool = False, sharpen: float = 0.0,
    ) -> DfmSwapModel:
        """From IdentityAutoencoder(s): the code of ``encoding_model`` (e.g. the identity model
        with its merged LoRA encoder delta) rendered by ``decoding_model``'s decoder (the base
        identity decoder; defaults to ``encoding_model``'s own, i.e. a reconstruction)."""
        decoding_model = decoding_model or encoding_model
        encoder_part = nn.Sequential(encoding_model.encoder, encoding_model.bottleneck)
        return cls(encoder_part, decoding_model.decoder, face_mask_source, fill_background=fill_background, sharpen=sharpen)

    def forward(self, in_face: torch.Tensor, morph_value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bgr = in_face.permute(0, 3, 1, 2)
        if self.input_blur:
            bgr = _gaussian_blur(bgr, self.input_blur, edge=True)
        code = self.encoder_part(bgr)
        if self.takes_morph:
            morph = in_face.new_ones(1) if morph_value is None else morph_value
            celeb_face, celeb_mask_logits = self.decoder_part(code, morph)
        elif morph_value is not None:
            raise ValueError("this DFM model has no morph_value input")
        else:
            morph = in_face.new_ones(1)
            celeb_face, celeb_mask_logits = self.decoder_part(code)
        celeb_mask = torch.sigmoid(celeb_mask_logits)
        if self.colour_gain is not None:
            celeb_face = (celeb_face * (1 + morph.view(-1, 1, 1, 1) * (self.colour_gain - 1))).clamp(0, 1)
        if self.fill_background:
            celeb_face = fill_outside_mask(celeb_face, celeb_mask)
        if self.sharpen:
            celeb_face = unsharp(celeb_face, self.sharpen)
        face_mask = celeb_mask if self.face_mask_source is None else self.face_mask_source(bgr)
        return _to_nhwc(face_mask), _to_nhwc(celeb_face), _to_nhwc(celeb_mask)


def dfm_input(crop_bgr: np.ndarray) -> np.ndarray:
    """One uint8 BGR crop [S, S, 3] → the DFM input [1, S, S, 3] float32 in [0, 1]."""
    crop = np.asarray(crop_bgr)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"dfm_input expects one uint8 BGR crop [S, S, 3], got {crop.dtype} {list(crop.shape)}")
    return (crop.astype(np.float32) / 255.0)[None]


@dataclass(frozen=True)
class SwappedFaces:
    faces: np.ndarray  # [N, S, S, 3] uint8 BGR: the identity in the target's pose
    celeb_masks: np.ndarray  # [N, S, S] uint8: the swapped face's mask
    face_masks: np.ndarray  # [N, S, S] uint8: the input (target) face's mask


@torch.no_grad()
def swap_faces(dfm_model: nn.Module, crops: np.ndarray, size: int, batch: int = 16) -> SwappedFaces:
    """Run a DFM-convention module on aligned uint8 BGR crops (resized to ``size`` first), the
    way the exported model is fed; outputs at the model size."""
    small = resize_crops(crops, size)
    dfm_model.eval()
    faces, celeb, masks = [], [], []
    for start in range(0, len(small), batch):
        inputs = torch.from_numpy(small[start:start + batch].astype(np.float32) / 255.0)
        face_mask, celeb_face, celeb_mask = dfm_model(inputs)
        masks.append(face_mask[..., 0].numpy())
        faces.append(celeb_face.numpy())
        celeb.append(celeb_mask[..., 0].numpy())

    def to_uint8(parts: list[np.ndarray]) -> np.ndarray:
        return np.clip(np.rint(np.concatenate(parts) * 255.0), 0, 255).astype(np.uint8)

    return SwappedFaces(to_uint8(faces), to_uint8(celeb), to_uint8(masks))
