"""Native libraries' start-up chatter kept off the user's terminal, every other line kept.

MediaPipe's C++ graphs write a few lines straight to file descriptor 2 (below Python's
sys.stderr) as each graph starts: TensorFlow Lite's "Created TensorFlow Lite XNNPACK delegate",
absl's "All log messages before absl::InitializeLog() ..." and a warning per model about feedback
tensors. A build starts a graph per video and per batch of stills, so README command 1 printed
some ninety of them among its progress lines, warnings a user can do nothing about. They go
through absl's logging, which neither GLOG_minloglevel nor TF_CPP_MIN_LOG_LEVEL silences, so
while a graph starts the descriptor points at a temporary file, and what was written there goes
back to stderr afterwards but for the lines known to be that chatter.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

MEDIAPIPE_STARTUP_CHATTER = re.compile(
    r"Created TensorFlow Lite XNNPACK delegate"
    r"|All log messages before absl::InitializeLog\(\) is called"
    r"|inference_feedback_manager\.cc:\d+\] Feedback manager requires a model with a single signature"
    r"|landmark_projection_calculator\.cc:\d+\] Using NORM_RECT without IMAGE_DIMENSIONS"
)

# Descriptor 2 belongs to the process, not to a thread: one redirection at a time.
_REDIRECTING = threading.Lock()


def _flush_python_stderr() -> None:
    if sys.stderr is not None:
        sys.stderr.flush()


@contextlib.contextmanager
def chatter_dropped(chatter: re.Pattern[str] = MEDIAPIPE_STARTUP_CHATTER) -> Iterator[None]:
    """While inside, lines written to descriptor 2 that match `chatter` are dropped.

    Every other line (another thread's log line, a real error) reaches stderr when the block
    ends, in the order written.
    """
    with _REDIRECTING, tempfile.TemporaryFile() as captured:
        _flush_python_stderr()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            _flush_python_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not chatter.search(line.decode("utf-8", errors="replace"))]
            if kept:
                os.write(2, b"".join(kept))
