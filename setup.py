"""Install the BranchyNet reimplementation: ``pip install -e .`` (see dev.sh for the constraint)."""
from setuptools import find_packages, setup

setup(
    name="branchynet",
    version="0.1.0",
    description="A faithful Chainer 7 reimplementation of BranchyNet (ICPR 2016)",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["branchynet", "branchynet.*", "networks", "experiments"]),
    install_requires=[
        "chainer==7.8.1",
        # chainer imports pkg_resources at run time; setuptools 82 removed it.
        "setuptools<82",
        "numpy>=1.26",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "mlxtend>=0.23",
        "threadpoolctl>=3",  # BLAS thread settings recorded with every timing
    ],
    extras_require={
        # papermill + ipykernel execute the notebooks in the tests (CI).
        "test": ["pytest>=7", "papermill>=2.4", "ipykernel>=6"],
        "notebooks": ["jupyterlab>=4", "papermill>=2.4", "ipykernel>=6"],
        # CuPy for a CUDA 12 or a CUDA 13 driver. CuPy 14 wheels carry no CUDA libraries;
        # [ctk] brings cuBLAS, cuRAND and NVRTC as wheels (docs/gpu.md). CuPy 13 works too.
        "gpu": ["cupy-cuda12x[ctk]>=13"],
        "gpu-cuda13": ["cupy-cuda13x[ctk]>=13.6"],
    },
    entry_points={"console_scripts": ["branchynet-run=experiments.run:cli"]},
)
