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
    # The start-up hook dev.sh installs: NumPy-2 fixes whenever chainer is imported first.
    py_modules=["branchynet_startup"],
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
        # ... and the deploy pins below, so CI runs the ONNX tests too.
        "test": ["pytest>=7", "papermill>=2.4", "ipykernel>=6", "scipy>=1.10",
                 "onnx==1.23.2", "onnxruntime==1.32.0"],
        "notebooks": ["jupyterlab>=4", "papermill>=2.4", "ipykernel>=6"],
        # Data-parallel training (mpiexec ... --communicator NAME, docs/distributed.md):
        # mpi4py and an MPI library as a wheel (MPICH; its mpiexec lands in the venv's bin),
        # so no system MPI is needed. Light (two binary wheels, ~15 MB): ./dev.sh installs
        # it with the test extra. Tested: mpi4py 4.1.2 + mpich 5.0.2, Python 3.11, NumPy 2.4.
        "distributed": ["mpi4py>=4.1", "mpich>=5"],
        # CuPy for a CUDA 12 or a CUDA 13 driver. CuPy 14 wheels carry no CUDA libraries;
        # [ctk] brings cuBLAS, cuRAND and NVRTC as wheels (docs/gpu.md). CuPy 13 works too.
        "gpu": ["cupy-cuda12x[ctk]>=13"],
        "gpu-cuda13": ["cupy-cuda13x[ctk]>=13.6"],
        # ONNX export (the exporter, onnx_chainer, ships inside chainer 7.8.1; it needs
        # onnx, whose dropped onnx.mapping branchynet/_onnx_compat.py restores) and ONNX
        # Runtime (docs/deploy.md). The versions tested here, on NumPy 2 and Python 3.11.
        "deploy": ["onnx==1.23.2", "onnxruntime==1.32.0"],
    },
    entry_points={"console_scripts": ["branchynet-run=experiments.run:cli"]},
)
