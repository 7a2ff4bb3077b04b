"""SageMaker training and batch transform through boto3, against the moto server on 127.0.0.1.

moto accepts the calls and reports every job Completed at once, but runs no container: where the
container would write (model.tar.gz, `<part>.csv.out`), these tests write real files themselves,
from the `on_status` callback that fires when the client first sees `Completed`, i.e. exactly
between "the job finished" and "the client reads the job's output".
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import uuid
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb
from botocore.exceptions import ClientError
from moto.backends import get_backend
from moto.core import DEFAULT_ACCOUNT_ID

from instarec_assets.backends.model_backend import SageMakerTrainer
from instarec_assets.backends.sagemaker import (
    SageMakerJobError,
    SageMakerSettings,
    SageMakerXGBoost,
    make_job_name,
    parse_predictions,
    wait_for_job,
    xgboost_image_uri,
)
from instarec_assets.ml.reorder_model import FeatureRows, InProcessTrainer
from instarec_assets.ml.training import ReorderModelParams
from instarec_assets_tests.aws_fixtures import REGION, train_like_the_container

ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/instarec-test-sagemaker-execution"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.0-5"
FEATURES = ("days_since_last", "times_bought", "reorder_rate", "in_last_order", "aisle_share")


def _data(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    days = rng.integers(0, 31, rows)
    times = rng.integers(1, 40, rows)
    rate = rng.random(rows)
    last = rng.random(rows) < 0.3
    share = rng.random(rows)
    share[rng.random(rows) < 0.1] = np.nan  # missing values travel as `nan`
    label = ((rate + 0.5 * last - days / 60 + rng.normal(0, 0.2, rows)) > 0.6).astype(np.int64)
    return pa.table(
        {
            "label": label,
            "days_since_last": days,
            "times_bought": times,
            "reorder_rate": rate,
            "in_last_order": last,
            "aisle_share": share,
        }
    )


def _matrix(table: pa.Table) -> np.ndarray:
    return np.column_stack(
        [table.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in FEATURES]
    )


def _booster(table: pa.Table) -> xgb.Booster:
    labels = table.column("label").to_numpy()
    return xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3},
        xgb.DMatrix(_matrix(table), label=labels),
        num_boost_round=8,
    )


def _model_tar_gz(booster: xgb.Booster, tmp_path: Path) -> bytes:
    """What the container writes: model.tar.gz holding `xgboost-model` (UBJSON, as xgboost 3 saves it)."""
    model = tmp_path / "container-output" / "xgboost-model"
    model.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(model.with_suffix(".ubj")))
    model.with_suffix(".ubj").rename(model)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model, arcname="xgboost-model")
    return buffer.getvalue()


def _put(s3, uri: str, body: bytes) -> None:
    bucket, _, key = uri[5:].partition("/")
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def _get(s3, uri: str) -> bytes:
    bucket, _, key = uri[5:].partition("/")
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.fixture
def s3(aws_env: str):
    return boto3.client("s3", endpoint_url=aws_env, region_name=REGION)


@pytest.fixture
def sm(aws_env: str):
    return boto3.client("sagemaker", endpoint_url=aws_env, region_name=REGION)


@pytest.fixture
def settings(aws_env: str, s3) -> SageMakerSettings:
    bucket = f"instarec-test-curated-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return SageMakerSettings(
        role_arn=ROLE, bucket=bucket, region=REGION, endpoint_url=aws_env, poll_interval_s=0.01, timeout_s=10
    )


pytestmark = pytest.mark.aws


def test_image_uri_per_region():
    assert xgboost_image_uri("us-east-1") == IMAGE
    assert (
        xgboost_image_uri("eu-west-1", "1.7-1")
        == "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    )
    assert xgboost_image_uri("cn-north-1").endswith(".amazonaws.com.cn/sagemaker-xgboost:3.0-5")
    with pytest.raises(SageMakerJobError, match="mars-east-1"):
        xgboost_image_uri("mars-east-1")
    assert make_job_name().startswith("instarec-xgb-")
    assert len(make_job_name("instarec-" + "x" * 40)) <= 63


def test_training_job_lifecycle(settings: SageMakerSettings, s3, sm, tmp_path: Path):
    train, validation = _data(400, seed=1), _data(120, seed=2)
    trained = _booster(train)  # stands in for what the container would train
    statuses: list[str] = []

    def container_finished(status, description):
        statuses.append(status)
        if status == "Completed":
            _put(s3, description["ModelArtifacts"]["S3ModelArtifacts"], _model_tar_gz(trained, tmp_path))

    client = SageMakerXGBoost(settings)
    result = client.run_training_job(
        train=train,
        validation=validation,
        hyperparameters={"num_round": 50, "max_depth": 4},
        job_name="instarec-xgb-test-1",
        workdir=tmp_path / "work",
        on_status=container_finished,
    )

    bucket = settings.bucket
    assert statuses == ["Completed"]
    # the channels: CSV, label first, no header, features in table order, missing as nan
    train_csv = _get(s3, f"s3://{bucket}/sagemaker/instarec-xgb-test-1/train/train.csv").decode()
    lines = train_csv.splitlines()
    assert len(lines) == 400 and not lines[0][0].isalpha()
    uploaded = np.genfromtxt(io.StringIO(train_csv), delimiter=",")
    np.testing.assert_array_equal(uploaded[:, 0], train.column("label").to_numpy())
    np.testing.assert_array_equal(uploaded[:, 1:], _matrix(train))
    assert (
        len(_get(s3, f"s3://{bucket}/sagemaker/instarec-xgb-test-1/validation/validation.csv").splitlines())
        == 120
    )

    # the job as SageMaker (moto) recorded it
    job = sm.describe_training_job(TrainingJobName="instarec-xgb-test-1")
    assert job["TrainingJobStatus"] == "Completed"
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert job["RoleArn"] == ROLE
    assert job["HyperParameters"] == {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "num_round": "50",
        "early_stopping_rounds": "20",
        "max_depth": "4",
        "eta": "0.1",
        "subsample": "0.8",
        "colsample_bytree": "0.8",
        "min_child_weight": "1",
        "tree_method": "hist",
    }
    channels = {channel["ChannelName"]: channel for channel in job["InputDataConfig"]}
    assert set(channels) == {"train", "validation"}
    assert (
        channels["train"]["DataSource"]["S3DataSource"]["S3Uri"]
        == f"s3://{bucket}/sagemaker/instarec-xgb-test-1/train/"
    )
    assert channels["validation"]["ContentType"] == "text/csv"
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{bucket}/models/xgboost/"
    assert job["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 4 * 3600

    # the result: the artifact moto reports, downloaded and loadable, predicting as the trained booster
    assert (
        result.model_artifact_uri == f"s3://{bucket}/models/xgboost/instarec-xgb-test-1/output/model.tar.gz"
    )
    assert result.model_path.name == "xgboost-model" and result.model_path.exists()
    assert result.feature_names == FEATURES
    assert (result.train_rows, result.validation_rows) == (400, 120)
    probe = xgb.DMatrix(_matrix(validation))
    np.testing.assert_array_equal(result.load_booster().predict(probe), trained.predict(probe))
    assert result.as_metadata()["job_name"] == "instarec-xgb-test-1"


def test_batch_transform_reads_predictions_back_in_row_order(
    settings: SageMakerSettings, s3, sm, tmp_path: Path
):
    train = _data(300, seed=3)
    booster = _booster(train)
    model_url = f"s3://{settings.bucket}/models/xgboost/instarec-xgb-0/output/model.tar.gz"
    _put(s3, model_url, _model_tar_gz(booster, tmp_path))
    scored = (
        _data(2500, seed=4).drop_columns(["label"]).select(list(reversed(FEATURES)))
    )  # columns out of order
    seen: dict = {}

    def container_finished(status, description):
        """Score each uploaded part as the container would and write `<part>.out`."""
        if status != "Completed":
            return
        seen["job"] = description
        seen["model"] = sm.describe_model(ModelName=description["ModelName"])
        source = description["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, _, prefix = source[5:].partition("/")
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
        seen["parts"] = keys
        for key in keys:
            rows = np.genfromtxt(io.BytesIO(_get(s3, f"s3://{bucket}/{key}")), delimiter=",", ndmin=2)
            predictions = booster.predict(xgb.DMatrix(rows))
            body = (
                "\n".join(map(str, predictions.tolist())) + "\n\n"
            )  # batch mode ends each mini-batch with \n
            name = key.rsplit("/", 1)[1]
            _put(s3, description["TransformOutput"]["S3OutputPath"] + name + ".out", body.encode())

    result = SageMakerXGBoost(settings).run_batch_transform(
        model_data_url=model_url,
        features=scored,
        feature_names=FEATURES,
        job_name="instarec-score-test-1",
        workdir=tmp_path / "work",
        rows_per_file=1000,
        on_status=container_finished,
    )

    expected = booster.predict(xgb.DMatrix(_matrix(scored)))
    assert result.rows == 2500
    np.testing.assert_allclose(result.predictions, expected, rtol=1e-6)
    assert [key.rsplit("/", 1)[1] for key in seen["parts"]] == [
        "part-00000.csv",
        "part-00001.csv",
        "part-00002.csv",
    ]
    job = seen["job"]
    assert job["ModelName"] == "instarec-score-test-1"
    assert job["TransformInput"]["ContentType"] == "text/csv"
    assert job["TransformInput"]["SplitType"] == "Line"
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == result.input_uri
    assert (
        job["TransformOutput"]["S3OutputPath"]
        == f"s3://{settings.bucket}/models/batch-transform/instarec-score-test-1/"
    )
    assert job["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1}
    model = seen["model"]
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == model_url
    assert model["ExecutionRoleArn"] == ROLE
    with pytest.raises(ClientError):  # the model is deleted after the transform
        sm.describe_model(ModelName="instarec-score-test-1")


def test_missing_or_short_transform_output_is_an_error(settings: SageMakerSettings, s3, tmp_path: Path):
    client = SageMakerXGBoost(settings)
    features = _data(10, seed=5).drop_columns(["label"])
    with pytest.raises(SageMakerJobError, match=r"completed but s3://.*part-00000\.csv\.out does not exist"):
        client.run_batch_transform(
            model_data_url=f"s3://{settings.bucket}/models/m.tar.gz", features=features, workdir=tmp_path
        )

    def short_output(status, description):
        _put(s3, description["TransformOutput"]["S3OutputPath"] + "part-00000.csv.out", b"0.5\n0.25\n")

    with pytest.raises(SageMakerJobError, match="has 2 predictions for 10 input rows"):
        client.run_batch_transform(
            model_data_url=f"s3://{settings.bucket}/models/m.tar.gz",
            features=features,
            workdir=tmp_path,
            on_status=short_output,
        )


def test_a_failed_training_job_raises_its_failure_reason(settings: SageMakerSettings, tmp_path: Path):
    """moto cannot fail a job by itself: the test sets the status in the moto server's state; the
    client still reads it through DescribeTrainingJob over HTTP."""
    client = SageMakerXGBoost(settings)
    started = client.start_training_job(
        train=_data(50, seed=6), job_name="instarec-xgb-fails", workdir=tmp_path
    )
    job = get_backend("sagemaker")[DEFAULT_ACCOUNT_ID][REGION].training_jobs["instarec-xgb-fails"]
    job.training_job_status = "Failed"
    job.failure_reason = "AlgorithmError: XGBoost training failed.\nCheck the logs"

    with pytest.raises(SageMakerJobError) as raised:
        client.wait_training_job(started["job_name"])
    assert str(raised.value) == (
        "SageMaker training job instarec-xgb-fails failed: AlgorithmError: XGBoost training failed. Check the logs"
    )
    assert raised.value.status == "Failed"


def test_wait_for_job_status_machine():
    """Unit test of the polling logic with an injected describe function (no AWS involved)."""

    def scripted(*statuses, reason=""):
        replies = iter(statuses)
        return lambda: {"Status": next(replies), "FailureReason": reason}

    sleeps: list[float] = []
    seen: list[str] = []
    done = wait_for_job(
        scripted("InProgress", "InProgress", "Completed"),
        kind="training",
        name="j",
        status_key="Status",
        poll_interval_s=7,
        timeout_s=100,
        sleep=sleeps.append,
        on_status=lambda status, _: seen.append(status),
    )
    assert done["Status"] == "Completed" and sleeps == [7, 7] and seen == ["InProgress", "Completed"]

    with pytest.raises(SageMakerJobError, match=r"^SageMaker training job j stopped: user\s+asked$"):
        wait_for_job(
            scripted("InProgress", "Stopping", "Stopped", reason="user\n  asked"),
            kind="training",
            name="j",
            status_key="Status",
            poll_interval_s=1,
            timeout_s=100,
            sleep=lambda _: None,
        )

    now = [0.0]
    stopped: list[bool] = []
    with pytest.raises(SageMakerJobError, match="still InProgress after 60 s; a stop was requested"):
        wait_for_job(
            lambda: {"Status": "InProgress"},
            kind="training",
            name="j",
            status_key="Status",
            poll_interval_s=30,
            timeout_s=60,
            sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
            clock=lambda: now[0],
            stop=lambda: stopped.append(True),
        )
    assert stopped == [True]


def test_legacy_binary_model_artifact_is_rejected_clearly(settings: SageMakerSettings, s3, tmp_path: Path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        payload = b"binf" + bytes(200)  # not JSON/UBJSON: what the 1.x containers' save_model writes
        info = tarfile.TarInfo("xgboost-model")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    uri = f"s3://{settings.bucket}/models/xgboost/old/output/model.tar.gz"
    _put(s3, uri, buffer.getvalue())
    with pytest.raises(SageMakerJobError, match="legacy binary model format"):
        SageMakerXGBoost(settings).fetch_model(uri, tmp_path)
    with pytest.raises(SageMakerJobError, match="could not be downloaded"):
        SageMakerXGBoost(settings).fetch_model(f"s3://{settings.bucket}/models/none.tar.gz", tmp_path)


def test_bad_training_input_is_rejected_before_any_job(settings: SageMakerSettings, sm, tmp_path: Path):
    client = SageMakerXGBoost(settings)
    table = _data(20, seed=7)
    jobs_before = len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"])
    with pytest.raises(SageMakerJobError, match="no label column 'target'"):
        client.start_training_job(train=table, label_column="target", workdir=tmp_path)
    with pytest.raises(SageMakerJobError, match="column aisle is string"):
        client.start_training_job(train=table.append_column("aisle", pa.array(["x"] * 20)), workdir=tmp_path)
    with pytest.raises(SageMakerJobError, match="early_stopping_rounds needs a validation channel"):
        client.start_training_job(train=table, hyperparameters={"early_stopping_rounds": 5}, workdir=tmp_path)
    with pytest.raises(SageMakerJobError, match="job name"):
        client.start_training_job(train=table, job_name="bad_name", workdir=tmp_path)
    assert len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]) == jobs_before
    with pytest.raises(SageMakerJobError, match="INSTAREC_SAGEMAKER_ROLE_ARN"):
        SageMakerXGBoost(SageMakerSettings(role_arn="", bucket="b"))


def test_settings_from_the_orchestration_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INSTAREC_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("INSTAREC_CURATED_BUCKET", "curated")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("INSTAREC_SAGEMAKER_SUBNETS", "subnet-a,subnet-b")
    monkeypatch.setenv("INSTAREC_SAGEMAKER_SECURITY_GROUPS", "sg-1")
    settings = SageMakerSettings.from_env(instance_type="ml.m5.2xlarge")
    assert settings.vpc_config() == {
        "VpcConfig": {"Subnets": ["subnet-a", "subnet-b"], "SecurityGroupIds": ["sg-1"]}
    }
    assert settings.image == "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:3.0-5"
    assert settings.instance_type == "ml.m5.2xlarge"
    assert parse_predictions("0.5\n\n0.25\n").tolist() == [0.5, 0.25]


def _play_training_container(s3, description, tmp_path: Path, save_best: bool) -> xgb.Booster:
    """The container's side of a training job: read the label-first CSV channels, train as the
    container does (`train_like_the_container`), save the model as `xgboost-model`."""
    matrices = {}
    for channel in description["InputDataConfig"]:
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        rows = np.genfromtxt(io.BytesIO(_get(s3, f"{uri}{channel['ChannelName']}.csv")), delimiter=",")
        matrices[channel["ChannelName"]] = xgb.DMatrix(rows[:, 1:], label=rows[:, 0])
    booster = train_like_the_container(
        description["HyperParameters"], matrices["train"], matrices["validation"], save_best
    )
    _put(s3, description["ModelArtifacts"]["S3ModelArtifacts"], _model_tar_gz(booster, tmp_path))
    return booster


def _feature_rows(users: int, seed: int) -> FeatureRows:
    table = _data(users * 6, seed=seed)
    return FeatureRows(
        features=_matrix(table).astype(np.float32),
        user_ids=np.repeat(np.arange(1, users + 1), 6),
        product_ids=np.tile(np.arange(1, 7), users),
        order_ids=np.repeat(np.arange(1001, 1001 + users), 6),
        eval_sets=np.full(users * 6, "train"),
        labels=table.column("label").to_numpy().astype(np.float32),
        feature_names=FEATURES,
    )


@pytest.mark.parametrize(
    "save_best", [True, False], ids=["container-keeps-best-rounds", "artifact-holds-all-rounds"]
)
def test_sagemaker_trainer_sends_the_in_process_parameters_and_keeps_the_early_stopping_best(
    settings: SageMakerSettings, s3, sm, tmp_path: Path, save_best: bool
):
    params = ReorderModelParams(
        eta=0.9, max_depth=6, min_child_weight=1.0, reg_lambda=2.5, gamma=0.1, max_bin=64
    )
    params = dataclasses.replace(params, num_boost_round=300, early_stopping_rounds=4, nthread=2)
    data = _feature_rows(users=300, seed=11)
    container: dict[str, xgb.Booster] = {}

    def container_finished(status, description):
        if status == "Completed" and "HyperParameters" in description:
            container["booster"] = _play_training_container(s3, description, tmp_path, save_best)

    trainer = SageMakerTrainer(SageMakerXGBoost(settings, on_status=container_finished))
    model = trainer.train(data, params, seed=7, workdir=tmp_path / "work")

    job = sm.describe_training_job(TrainingJobName=trainer.card_extra["sagemaker_training_job"])
    assert job["HyperParameters"] == {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "eval_metric": "logloss",
        "eta": "0.9",
        "max_depth": "6",
        "min_child_weight": "1.0",
        "subsample": "0.8",
        "colsample_bytree": "0.8",
        "lambda": "2.5",
        "gamma": "0.1",
        "max_bin": "64",
        "seed": "7",
        "num_round": "300",
        "early_stopping_rounds": "4",
    }
    assert trainer.card_extra["parameters"] == job["HyperParameters"]  # the card records what was sent

    # best_iteration and best_score are the container's early-stopping best, and the model is cut there
    trained = container["booster"]
    best = int(trained.attr("best_iteration"))
    rounds = trained.num_boosted_rounds()
    assert trainer.card_extra["n_rounds_trained"] == rounds
    assert rounds == best + 1 if save_best else rounds > best + 1
    assert model.best_iteration == best and model.booster.num_boosted_rounds() == best + 1
    assert model.best_score == pytest.approx(float(trained.attr("best_score")))
    assert trainer.card_extra["best_iteration_source"].startswith("early stopping")
    validation = data.features[model.validation_index]
    np.testing.assert_allclose(
        model.booster.inplace_predict(validation),
        trained.predict(xgb.DMatrix(validation), iteration_range=(0, best + 1)),
        rtol=1e-6,
    )

    # and the in-process trainer fits the same model from the same parameters and seed
    local = InProcessTrainer().train(data, params, seed=7, workdir=tmp_path / "local")
    assert local.best_iteration == model.best_iteration
    np.testing.assert_array_equal(local.validation_index, model.validation_index)
    np.testing.assert_allclose(
        local.booster.inplace_predict(validation), model.booster.inplace_predict(validation), atol=1e-5
    )
