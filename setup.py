"""Packaging for instarec: the Dagster code location and the `instarec` console script."""

from setuptools import find_packages, setup

setup(
    name="instarec",
    version="0.1.0",
    description="A Dagster lakehouse that turns Instacart-format order history into product recommendations.",
    packages=find_packages(exclude=["instarec_assets_tests", "instarec_assets_tests.*"]),
    include_package_data=True,
    package_data={
        "instarec_assets": [
            "**/*.sql",
            "**/*.html",
            "**/*.yaml",
            "**/*.json",
            "generate/data/*.csv",
            "generate/data/*.csv.gz",
        ]
    },
    python_requires=">=3.11",
    install_requires=[
        "dagster==1.13.*",
        "dagster-webserver==1.13.*",
        "dagster-aws==0.29.*",
        "dagster-duckdb==0.29.*",
        "duckdb>=1.2",
        "pandas>=2.2,<3",
        "pyarrow>=17",
        "numpy>=1.26",
        "universal-pathlib>=0.2",
        "s3fs>=2025.1",
        "boto3",
        "matplotlib>=3.8",
        "xgboost-cpu>=2.1",
        "scikit-learn>=1.5",
        "torch==2.13.0",
        "torch-geometric>=2.6",
        "uvicorn[standard]>=0.30",
        "tabulate>=0.9",
        "rich>=13",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.6",
            "ruff>=0.6",
            "moto[server]>=5.1",
            "playwright>=1.45",
            "openapi-spec-validator>=0.7",
            "pyyaml>=6",
            "import-linter>=2.1",
        ],
    },
    entry_points={"console_scripts": ["instarec=instarec_assets.cli:main"]},
)
