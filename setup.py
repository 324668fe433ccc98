"""cdcl: Cross-Dataset Collaborative Learning for LiDAR and image segmentation."""
from setuptools import find_packages, setup

setup(
    name="cdcl",
    version="0.1.0",
    description="One segmentation network trained on several driving datasets at once (CDCL)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["common", "common.*", "cdcl2d", "cdcl2d.*", "cdcl3d", "cdcl3d.*"]),
    package_data={"cdcl3d": ["data/*.yaml"]},
    # torch is pinned to the CPU build that lies on local disk; a looser spec
    # would let pip resolve a multi-GB CUDA build instead.
    install_requires=[
        "torch==2.13.0",
        "numpy<2",
        "numba",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "pillow",
    ],
    extras_require={
        "nuscenes": ["nuscenes-devkit"],
        "vis": ["open3d"],
        "sparse": ["spconv-cu120"],
        "onnx": ["onnx", "onnxruntime"],
        "cityscapes": ["cityscapesScripts"],
        "test": ["pytest"],
        "all": ["nuscenes-devkit", "open3d", "spconv-cu120", "onnx", "onnxruntime", "cityscapesScripts", "pytest"],
    },
    entry_points={
        "console_scripts": ["cdcl = common.cli:main"],
        # common never imports the task packages; it discovers them here.
        "cdcl.plugins": [
            "cdcl2d = cdcl2d.plugin:register",
            "cdcl3d = cdcl3d.plugin:register",
        ],
    },
)
