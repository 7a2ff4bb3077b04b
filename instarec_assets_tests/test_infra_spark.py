"""The Spark engine's AWS side (infra/stacks/spark.yaml): the EMR Serverless application, its job role
scoped to the clean step's prefixes, the run task's permission to submit to it, and the deploy that
uploads the job where instarec_assets/lake/emr_serverless.py points the job runs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from instarec_assets.lake.emr_serverless import ENVIRONMENT_ARCHIVE, JOB_SCRIPT_SOURCES
from instarec_assets_tests.test_infra_templates import (
    INFRA,
    STACKS,
    _container_env,
    _granting,
    _role_statements,
    _workflow,
    as_list,
    load_cfn,
    resolve_default,
)


def _import(name: str) -> dict[str, Any]:
    return {"Fn::ImportValue": {"Fn::Sub": f"instarec-${{EnvironmentName}}-{name}"}}


@pytest.fixture(scope="module")
def spark() -> dict[str, Any]:
    return load_cfn(STACKS / "spark.yaml")


@pytest.fixture(scope="module")
def orchestration() -> dict[str, Any]:
    return load_cfn(STACKS / "orchestration.yaml")


def _object_resources(statements: list[dict[str, Any]], action: str) -> set[tuple[str, str]]:
    """(bucket export, key pattern) of the `${Arn}/<pattern>` resources granting `action`."""
    found = set()
    for statement in _granting(statements, action):
        for resource in as_list(statement["Resource"]):
            template, variables = resource["Fn::Sub"]
            export = variables["Arn"]["Fn::ImportValue"]["Fn::Sub"].rsplit("-", 1)[1]
            found.add((export, template.removeprefix("${Arn}/")))
    return found


def _run_env_prefix(orchestration: dict[str, Any], name: str) -> tuple[str, str]:
    """(bucket export, key prefix) of an s3:// INSTAREC_EMR_* URI the run task definition composes."""
    template, variables = _container_env(orchestration["Resources"]["RunTaskDefinition"])[name]["Fn::Sub"]
    key = re.fullmatch(r"s3://\$\{B\}/(.+)", template).group(1)
    return variables["B"]["Fn::ImportValue"]["Fn::Sub"].rsplit("-", 1)[1], key


def test_application_starts_on_demand_stops_when_idle_and_is_capped(spark: dict[str, Any]) -> None:
    app = spark["Resources"]["SparkApplication"]["Properties"]
    assert app["Type"] == "Spark"  # what GetApplication answers and PipesEMRServerlessClient requires
    assert re.fullmatch(r"emr-7\.\d+\.\d+", resolve_default(spark, app["ReleaseLabel"]))  # Spark 3.5
    assert app["AutoStartConfiguration"] == {"Enabled": True}
    assert app["AutoStopConfiguration"]["Enabled"] is True
    assert 1 <= resolve_default(spark, app["AutoStopConfiguration"]["IdleTimeoutMinutes"]) <= 30
    assert "InitialCapacity" not in app  # pre-initialised workers would bill at rest
    capacity = {key: resolve_default(spark, value) for key, value in app["MaximumCapacity"].items()}
    assert capacity == {"Cpu": "64 vCPU", "Memory": "256 GB", "Disk": "1000 GB"}
    network = app["NetworkConfiguration"]
    assert network["SubnetIds"] == [_import("PrivateSubnetA"), _import("PrivateSubnetB")]
    assert network["SecurityGroupIds"] == [{"Ref": "SparkSecurityGroup"}]
    [egress] = spark["Resources"]["SparkSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert (egress["IpProtocol"], egress["FromPort"], egress["ToPort"]) == ("tcp", 443, 443)
    logs = app["MonitoringConfiguration"]["CloudWatchLoggingConfiguration"]
    assert logs == {"Enabled": True, "LogGroupName": {"Ref": "SparkLogGroup"}}
    group = spark["Resources"]["SparkLogGroup"]["Properties"]
    assert group["KmsKeyId"] == _import("LakeKeyArn")


def test_job_role_reads_and_writes_exactly_the_clean_step_prefixes(
    spark: dict[str, Any], orchestration: dict[str, Any]
) -> None:
    role = spark["Resources"]["SparkJobRole"]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "emr-serverless.amazonaws.com"}
    assert trust["Condition"]["ArnEquals"] == {"aws:SourceArn": {"Fn::GetAtt": ["SparkApplication", "Arn"]}}
    statements = _role_statements(spark, "SparkJobRole")
    assert _object_resources(statements, "s3:GetObject") == {
        ("RawBucketArn", "raw_*"),
        ("CleanBucketArn", "clean_*"),
        ("CleanBucketArn", "quarantined_*"),
        ("CleanBucketArn", "emr-staging/*"),
        ("ArtifactsBucketArn", "emr-serverless/jobs/*"),
    }
    assert _object_resources(statements, "s3:PutObject") == {
        ("CleanBucketArn", "emr-staging/*"),
        ("ArtifactsBucketArn", "emr-serverless/logs/*"),
    }
    assert _object_resources(statements, "s3:DeleteObject") == {("CleanBucketArn", "emr-staging/*")}
    # The URIs the run task gets are inside what the role may use.
    assert _run_env_prefix(orchestration, "INSTAREC_EMR_STAGING_URI") == ("CleanBucketName", "emr-staging")
    assert _run_env_prefix(orchestration, "INSTAREC_EMR_LOGS_URI") == (
        "ArtifactsBucketName",
        "emr-serverless/logs",
    )
    assert _run_env_prefix(orchestration, "INSTAREC_EMR_ARTIFACTS_URI") == (
        "ArtifactsBucketName",
        "emr-serverless/jobs/${ImageTag}",
    )
    listings = {
        json.dumps(s["Resource"]): sorted(s["Condition"]["StringLike"]["s3:prefix"])
        for s in _granting(statements, "s3:ListBucket")
    }
    assert listings == {
        json.dumps(_import("RawBucketArn")): ["raw_*"],
        json.dumps(_import("CleanBucketArn")): ["clean_*", "emr-staging", "emr-staging/*", "quarantined_*"],
    }
    # The lake key only through S3, for reading and writing objects.
    kms = [s for s in statements if any(a.startswith("kms:") for a in as_list(s["Action"]))]
    assert [(sorted(s["Action"]), s["Resource"]) for s in kms] == [
        (["kms:Decrypt", "kms:GenerateDataKey"], _import("LakeKeyArn"))
    ]
    assert kms[0]["Condition"] == {
        "StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}
    }
    # Nothing but S3, KMS and its own log group; no curated or consumption zone, no analysts' bucket.
    services = {a.split(":")[0] for s in statements for a in as_list(s["Action"])}
    assert services == {"s3", "kms", "logs"}
    text = json.dumps(statements)
    for other in ("CuratedBucket", "ConsumptionBucket", "AnalystBucket", "LogsBucket", "landing/"):
        assert other not in text, other
    for statement in _granting(statements, "logs:PutLogEvents"):
        assert statement["Resource"] == {"Fn::GetAtt": ["SparkLogGroup", "Arn"]}


def test_run_task_submits_only_to_its_application_and_passes_only_the_job_role(
    spark: dict[str, Any], orchestration: dict[str, Any]
) -> None:
    run_role = orchestration["Resources"]["RunTaskRole"]["Properties"]
    assert run_role["ManagedPolicyArns"] == [_import("SubmitSparkJobsPolicyArn")]
    assert spark["Outputs"]["SubmitSparkJobsPolicyArn"]["Value"] == {"Ref": "SubmitSparkJobsPolicy"}
    statements = spark["Resources"]["SubmitSparkJobsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    app, runs = {"Fn::GetAtt": ["SparkApplication", "Arn"]}, {"Fn::Sub": "${SparkApplication.Arn}/jobruns/*"}
    granted = {
        action: statement["Resource"]
        for statement in statements
        for action in as_list(statement["Action"])
        if action.startswith("emr-serverless:")
    }
    assert granted == {
        "emr-serverless:StartJobRun": app,
        "emr-serverless:ListJobRuns": app,  # emr_serverless.failed_job_run
        "emr-serverless:GetApplication": app,  # the client reads the application's log settings
        "emr-serverless:GetJobRun": runs,
        "emr-serverless:CancelJobRun": runs,
        "emr-serverless:GetDashboardForJobRun": runs,
        "emr-serverless:TagResource": runs,
    }
    [passing] = _granting(statements, "iam:PassRole")
    assert passing["Resource"] == {"Fn::GetAtt": ["SparkJobRole", "Arn"]}
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}}
    [reading] = _granting(statements, "logs:GetLogEvents")
    assert reading["Resource"] == {"Fn::GetAtt": ["SparkLogGroup", "Arn"]}
    # The run task learns where to submit; the webserver and daemon never submit.
    env = _container_env(orchestration["Resources"]["RunTaskDefinition"])
    assert env["INSTAREC_EMR_APPLICATION_ID"] == _import("SparkApplicationId")
    assert env["INSTAREC_EMR_JOB_ROLE_ARN"] == _import("SparkJobRoleArn")
    assert env["INSTAREC_EMR_LOG_GROUP"] == _import("SparkLogGroupName")
    for service in ("WebserverTaskDefinition", "DaemonTaskDefinition"):
        assert not any(
            name.startswith("INSTAREC_EMR_") for name in _container_env(orchestration["Resources"][service])
        )


def test_cloudformation_may_create_the_application_and_its_service_linked_role() -> None:
    bootstrap = load_cfn(STACKS / "bootstrap.yaml")
    statements = bootstrap["Resources"]["CfnComputePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    [create] = _granting(statements, "emr-serverless:CreateApplication")
    assert create["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:emr-serverless:*:${AWS::AccountId}:/applications/*"
    }
    [linked] = _granting(statements, "iam:CreateServiceLinkedRole")
    assert "ops.emr-serverless.amazonaws.com" in linked["Condition"]["StringEquals"]["iam:AWSServiceName"]


def test_deploy_uploads_the_job_and_environment_where_the_run_task_submits_them() -> None:
    workflow = _workflow("deploy-infra.yml")
    runs = [s["run"] for s in workflow["jobs"]["deploy"]["steps"] if "run" in s]
    step = [i for i, run in enumerate(runs) if run.endswith(" spark-job")]
    stacks = [i for i, run in enumerate(runs) if " spark" in run and not run.endswith("spark-job")]
    orchestration = [i for i, run in enumerate(runs) if "orchestration" in run]
    assert len(step) == 1 and stacks[0] < step[0] < orchestration[0]
    script = (INFRA / "scripts" / "deploy.sh").read_text()
    body = script[script.index("step_spark_job() {") :]
    body = body[: body.index("\n}\n")]
    # Under the image tag the orchestration stack puts into INSTAREC_EMR_ARTIFACTS_URI.
    assert 'prefix="s3://$bucket/emr-serverless/jobs/$IMAGE_TAG"' in body
    for source in JOB_SCRIPT_SOURCES:  # the clean job and the features job, each an entry point
        assert f'aws s3 cp "$ROOT/{source}" "$prefix/{source.rsplit("/", 1)[1]}"' in body
    assert f'aws s3 cp "$out/{ENVIRONMENT_ARCHIVE}" "$prefix/{ENVIRONMENT_ARCHIVE}"' in body
    assert "public.ecr.aws/amazonlinux/amazonlinux:2023" in body and "package_spark_env.sh" in body
    assert "spark spark-job" in script[script.index("ALL_STEPS=") :]
    packer = (INFRA / "scripts" / "package_spark_env.sh").read_text()
    assert f'ARCHIVE="{ENVIRONMENT_ARCHIVE}"' in packer
    assert "--python-prefix /home/hadoop/environment" in packer and "venv-pack" in packer
    # the job's pandas UDFs (nfc_normalize, json_valid) need pandas and pyarrow in the packed Python
    assert '("duckdb", "pandas", "pyarrow")' in packer
