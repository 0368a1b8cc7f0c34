"""What CPU a benchmark ran on, in one line, for its report.

Machines of the same kind are not the same CPU: the 2-vCPU "AMD EPYC" of this project's
benchmarks has been a Zen 4 part with AVX-512 (VNNI, BF16) on some days and a Zen 3 part with
AVX2 only on others, and int8 and bf16 kernels differ most between those (BENCHMARKS.md). A
figure without this line cannot be compared with another.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# instruction-set extensions that decide which int8 / bf16 kernels run, as /proc/cpuinfo names them
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")


def describe() -> str:
    """'AMD EPYC (family 25, model 1), 2 cores: avx2' or the platform's name off Linux."""
    cores = os.cpu_count()
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return f"{platform.processor() or platform.machine()}, {cores} cores"
    fields: dict[str, str] = {}
    for line in info.read_text().splitlines():
        if not line.strip():
            break  # the first processor's block is enough: the vCPUs are alike
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    present = [flag for flag in _FLAGS if flag in flags] or ["no AVX2"]
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    name = fields.get("model name", platform.machine())
    return f"{name} (family {family}, model {model}), {cores} cores: {', '.join(present)}"


if __name__ == "__main__":
    print(describe())
