"""The raw bucket's Object Lock reconciled with erasure: only AdminRole and the forget role may bypass
governance retention, and the forget role may do what `instarec forget` does in aws mode and no more."""

from __future__ import annotations

import json
from typing import Any

from instarec_assets_tests.test_infra_templates import _iam_statements, as_list, templates  # noqa: F401

ZONE_BUCKETS = ("RawBucketArn", "CleanBucketArn", "CuratedBucketArn", "ConsumptionBucketArn")


def _raw_policy(stacks: dict[str, dict[str, Any]]) -> list[dict]:
    return stacks["data-lake"]["Resources"]["RawBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]


def _exempt(statement: dict) -> set[str]:
    return {
        arn["Fn::Sub"].rsplit("/", 1)[1] for arn in statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
    }


def test_only_admin_and_the_forget_role_may_bypass_the_raw_buckets_governance_retention(
    templates: dict[str, dict[str, Any]],  # noqa: F811
) -> None:
    deny = {tuple(as_list(s["Action"])): s for s in _raw_policy(templates) if s["Effect"] == "Deny"}
    bypass = deny[("s3:BypassGovernanceRetention",)]
    assert _exempt(bypass) == {
        "instarec-${EnvironmentName}-AdminRole",
        "instarec-${EnvironmentName}-cfn-exec",
        "instarec-${EnvironmentName}-forget",
    }
    retention = deny[("s3:PutObjectRetention", "s3:PutBucketObjectLockConfiguration")]
    assert "instarec-${EnvironmentName}-forget" not in _exempt(retention)
    granting = {
        (stack, role)
        for stack, role, statement in _iam_statements(templates)
        if "s3:BypassGovernanceRetention" in as_list(statement["Action"])
    }
    assert granting == {("access", "AdminRole"), ("access", "ForgetRole")}


def test_forget_role_rewrites_the_zones_removes_old_versions_and_serving_items_with_mfa(
    templates: dict[str, dict[str, Any]],  # noqa: F811
) -> None:
    role = templates["access"]["Resources"]["ForgetRole"]["Properties"]
    assert role["RoleName"] == {"Fn::Sub": "instarec-${EnvironmentName}-forget"}
    trust = role["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Condition"]["Bool"]["aws:MultiFactorAuthPresent"] == "true"
    statements = {s["Sid"]: s for _, lid, s in _iam_statements(templates) if lid == "ForgetRole"}
    objects = statements["RewriteLakeObjectsAndRemoveTheirOldVersions"]
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"} <= set(
        objects["Action"]
    )
    assert "s3:DeleteObject" not in objects["Action"]  # rewrites replace objects; nothing is deleted whole
    text = json.dumps(objects["Resource"])
    assert all(bucket in text for bucket in ZONE_BUCKETS)
    assert "s3:ListBucketVersions" in statements["ListLakeObjectsAndVersions"]["Action"]
    serving = statements["DeleteTheUsersServingItems"]
    assert set(serving["Action"]) == {
        "dynamodb:Query",
        "dynamodb:GetItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:DeleteItem",
    }
    assert "RecommendationsTableArn" in json.dumps(serving["Resource"])


def test_forget_role_reads_the_run_tasks_salt_secret_and_no_other_secret(
    templates: dict[str, dict[str, Any]],  # noqa: F811
) -> None:
    """In aws mode `instarec forget` hashes the user id with the salt the run tasks use (the audit record
    and the warehouse's user_key): the role must read that one secret, and it must be able to decrypt it."""
    orchestration = templates["orchestration"]
    secret = orchestration["Resources"]["WarehouseSaltSecret"]
    exported = orchestration["Outputs"]["WarehouseSaltSecretArn"]
    assert exported["Value"] == {"Ref": "WarehouseSaltSecret"}
    export_name = exported["Export"]["Name"]
    assert export_name == {"Fn::Sub": "instarec-${EnvironmentName}-WarehouseSaltSecretArn"}
    run_tasks = orchestration["Resources"]["RunTaskRole"]["Properties"]["Policies"]
    run_task_env = json.dumps(orchestration["Resources"]["RunTaskDefinition"])
    assert '"INSTAREC_WAREHOUSE_SALT_SECRET", "Value": {"Ref": "WarehouseSaltSecret"}' in run_task_env
    assert any(
        statement.get("Resource") == {"Ref": "WarehouseSaltSecret"}
        for policy in run_tasks
        for statement in policy["PolicyDocument"]["Statement"]
    )

    forget = [s for _, lid, s in _iam_statements(templates) if lid == "ForgetRole"]
    secrets = [s for s in forget if any(a.startswith("secretsmanager:") for a in as_list(s["Action"]))]
    assert len(secrets) == 1
    [salt] = secrets
    assert salt["Effect"] == "Allow" and as_list(salt["Action"]) == ["secretsmanager:GetSecretValue"]
    assert salt["Resource"] == {"Fn::ImportValue": export_name}  # that ARN: no wildcard, no other secret
    assert "Condition" not in salt

    # The secret is encrypted with the lake key; the role may use it only through Secrets Manager (and S3,
    # DynamoDB for the rewrites), and no secrets resource policy narrows who may read it.
    lake_key = {"Fn::ImportValue": {"Fn::Sub": "instarec-${EnvironmentName}-LakeKeyArn"}}
    assert secret["Properties"]["KmsKeyId"] == lake_key
    [kms] = [
        s
        for s in forget
        if any(a.startswith("kms:") for a in as_list(s["Action"])) and s["Resource"] == lake_key
    ]
    assert "kms:Decrypt" in as_list(kms["Action"]) and kms["Resource"] == lake_key
    via = kms["Condition"]["StringEquals"]["kms:ViaService"]
    assert {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"} in via
    assert not [
        logical_id
        for template in templates.values()
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::SecretsManager::ResourcePolicy"
    ]


def test_forget_role_reaches_the_analysts_masked_tables_by_their_prefixes_and_no_further(
    templates: dict[str, dict[str, Any]],  # noqa: F811
) -> None:
    """`instarec forget` republishes the current masked snapshot and deletes older snapshot folders and
    replaced versions (instarec_assets/privacy/analyst_tables.py): the analysts' bucket by the tables'
    prefixes only, its key through S3 only, the analyst database's tables; no whole-object delete."""
    from instarec_assets.warehouse.masked import MASKED_TABLES

    statements = {s["Sid"]: s for _, lid, s in _iam_statements(templates) if lid == "ForgetRole"}
    bucket = {"Fn::ImportValue": {"Fn::Sub": "instarec-${EnvironmentName}-AnalystBucketArn"}}
    listing = statements["ListMaskedTablesAndVersions"]
    assert set(as_list(listing["Action"])) == {"s3:ListBucket", "s3:ListBucketVersions"}
    assert listing["Resource"] == bucket
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{table}/*" for table in MASKED_TABLES]}}

    objects = statements["RepublishMaskedTablesAndDeleteOldSnapshots"]
    assert set(objects["Action"]) == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:DeleteObjectVersion",
    }
    assert objects["Resource"] == [
        {"Fn::Sub": [f"${{Arn}}/{table}/*", {"Arn": bucket}]} for table in MASKED_TABLES
    ]

    key = statements["AnalystKeyThroughS3"]
    assert set(as_list(key["Action"])) == {"kms:Decrypt", "kms:GenerateDataKey"}
    assert key["Resource"] == {"Fn::ImportValue": {"Fn::Sub": "instarec-${EnvironmentName}-AnalystKeyArn"}}
    assert key["Condition"] == {
        "StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}
    }

    glue = statements["RepointMaskedTables"]
    assert set(as_list(glue["Action"])) == {"glue:GetDatabase", "glue:GetTable", "glue:UpdateTable"}
    resources = json.dumps(glue["Resource"])
    assert "AnalystDatabaseName" in resources and "_clean" not in resources
    assert [
        r for r in glue["Resource"] if isinstance(r, dict) and "Fn::Sub" in r and "table/" in json.dumps(r)
    ]

    # Nothing else of the role names the analysts' bucket, key or database, and no statement of the role
    # may delete a current object or create, delete or retarget anything in Glue beyond UpdateTable.
    analyst_sids = {"ListMaskedTablesAndVersions", "RepublishMaskedTablesAndDeleteOldSnapshots"}
    analyst_sids |= {"AnalystKeyThroughS3", "RepointMaskedTables"}
    for sid, statement in statements.items():
        if sid not in analyst_sids:
            assert "Analyst" not in json.dumps(statement["Resource"]), sid
        actions = as_list(statement["Action"])
        assert "s3:DeleteObject" not in actions and "s3:*" not in actions, sid
        assert not {a for a in actions if a.startswith("glue:")} - {
            "glue:GetDatabase",
            "glue:GetTable",
            "glue:UpdateTable",
        }, sid
    via = statements["LakeKeyThroughS3DynamoDbAndSecrets"]["Condition"]["StringEquals"]["kms:ViaService"]
    assert {"Fn::Sub": "glue.${AWS::Region}.amazonaws.com"} in via  # the Glue catalog's encryption key
