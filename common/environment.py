"""What a run ran on: versions, device and code commit, for the log and ``env.json``.

Every lookup is optional: a package that is not installed reads ``None``, and
so does the git commit where git is absent or the code is not a checkout.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from typing import Any, Dict, Optional

#: packages whose versions matter for the numbers (distribution names)
PACKAGES = ("torch", "numpy", "numba", "nuscenes-devkit", "spconv", "open3d", "tensorboard")


def package_version(name: str) -> Optional[str]:
    """The installed version of distribution ``name``, or None (without importing it)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        for alt in (f"{name}-cu118", f"{name}-cu120", f"{name}-cu121"):  # spconv's wheels
            try:
                return metadata.version(alt)
            except metadata.PackageNotFoundError:
                continue
        return None
    except Exception:  # a broken installation must not stop a run
        return None


def git_commit(folder: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """``{"commit": sha, "dirty": bool}`` of the checkout holding ``folder``
    (default: this code); None without git or outside a checkout."""
    folder = folder or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> Optional[str]:
        try:
            r = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": bool(status) if status is not None else None}


def collect_env(device: Any = None) -> Dict[str, Any]:
    """Python, packages, CUDA (when available), host and git commit."""
    import torch

    env: Dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "executable": sys.executable,
        "versions": {name: package_version(name) for name in PACKAGES},
        "cdcl": package_version("cdcl"),
        "torch_cuda": torch.version.cuda,  # the CUDA torch was built with (None: CPU build)
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "git": git_commit(),
    }
    env["versions"]["torch"] = torch.__version__
    if device is not None:
        env["device"] = str(device)
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def format_env(env: Dict[str, Any]) -> str:
    """One line: ``python 3.11.7, torch 2.3.0 (CUDA 12.1, 1x NVIDIA H100), numba 0.59.1, ...``."""
    v = env.get("versions", {})
    cuda = f"CUDA {env['torch_cuda']}" if env.get("torch_cuda") else "CPU build"
    if env.get("gpus"):
        cuda += f", {len(env['gpus'])}x {env['gpus'][0]}"
    parts = [f"python {env.get('python')}", f"torch {v.get('torch')} ({cuda})"]
    parts += [f"{name} {v[name]}" for name in PACKAGES if name != "torch" and v.get(name)]
    missing = [name for name in ("numba", "nuscenes-devkit") if not v.get(name)]
    if missing:
        parts.append("not installed: " + ", ".join(missing))
    g = env.get("git")
    parts.append(f"git {g['commit'][:12]}{' (uncommitted changes)' if g.get('dirty') else ''}" if g
                 else "git commit unknown")
    parts.append(f"device {env['device']}" if env.get("device") else "")
    threads = env.get("threads")
    parts.append(f"{threads} thread{'' if threads == 1 else 's'}, host {env.get('host')}")
    return ", ".join(p for p in parts if p)
