"""The AWS deployment under infra/: validators a deploy pipeline runs, plus the seed system's controls.

cfn-lint and checkov live in their own virtualenv (``.venv-tools``, created by ``make test``) because
checkov pins a botocore that breaks s3fs; ``INSTAREC_TOOLS_BIN`` overrides where they are looked for.
The templates are parsed here with a small YAML loader that understands CloudFormation's short-form
intrinsics (!Ref, !Sub, !GetAtt, ...), so the assertions read the same structure CloudFormation does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
STACKS = INFRA / "stacks"
WORKFLOWS = REPO / ".github" / "workflows"
_DEPLOY_TARGET_SPEC = importlib.util.spec_from_file_location(
    "deploy_target", INFRA / "scripts" / "deploy_target.py"
)
DEPLOY_TARGET = importlib.util.module_from_spec(_DEPLOY_TARGET_SPEC)
_DEPLOY_TARGET_SPEC.loader.exec_module(DEPLOY_TARGET)

EXPECTED_STACKS = {
    "bootstrap",
    "data-lake",
    "network",
    "ml",
    "spark",
    "serving",
    "analytics",
    "orchestration",
    "access",
    "monitoring",
    "frontend",
}
# The variables the application reads in aws mode (see infra/README.md).
APP_ENV_VARS = {
    "INSTAREC_ENV",
    "INSTAREC_HOME",
    "INSTAREC_RAW_BUCKET",
    "INSTAREC_CLEAN_BUCKET",
    "INSTAREC_CURATED_BUCKET",
    "INSTAREC_CONSUMPTION_BUCKET",
    "INSTAREC_DYNAMODB_TABLE",
    "INSTAREC_SAGEMAKER_ROLE_ARN",
    "AWS_REGION",
}
CLEAN_TABLES = ["clean_orders", "clean_order_products", "clean_products", "clean_aisles", "clean_departments"]
# Actions that AWS only authorises on Resource "*" (no resource-level permissions), or read-only listings.
STAR_RESOURCE_ALLOWED = {
    "athena:listdatacatalogs",
    "athena:listengineversions",
    "athena:listworkgroups",
    "cloudformation:validatetemplate",
    "cognito-idp:createuserpool",  # no resource type; bootstrap requires the project tag
    "cognito-idp:describeuserpooldomain",  # no resource type
    "cloudtrail:describetrails",
    "cloudtrail:lookupevents",
    "cloudwatch:describealarms",
    "cloudwatch:getmetricdata",
    "cloudwatch:listmetrics",
    "cloudwatch:putmetricdata",
    "ecr:getauthorizationtoken",
    "ecs:deregistertaskdefinition",
    "ecs:describetaskdefinition",
    "ecs:registertaskdefinition",
    "glue:getsecurityconfiguration",
    "kms:createkey",
    "logs:describeloggroups",
    "logs:describemetricfilters",
    "logs:describequeries",
    "logs:describeresourcepolicies",
    "logs:getqueryresults",
    "logs:listlogdeliveries",
    "logs:stopquery",
    "rds:describedbengineversions",
    "sagemaker:listmodels",
    "sagemaker:listtrainingjobs",
    "sagemaker:listtransformjobs",
    "secretsmanager:getrandompassword",
    "xray:puttelemetryrecords",
    "xray:puttracesegments",
}
STAR_RESOURCE_ALLOWED_PREFIXES = ("ec2:describe", "elasticloadbalancing:describe")
# AWS-managed policies a project role may attach, each with why an inline policy is not used instead.
AWS_MANAGED_POLICIES_ALLOWED = {
    # RDS Enhanced Monitoring writes to the RDSOSMetrics log group it creates itself; AWS documents
    # only this policy for the monitoring role.
    ("orchestration", "DatabaseMonitoringRole"): "service-role/AmazonRDSEnhancedMonitoringRole",
    # The account-wide API Gateway logging role writes execution logs to log groups API Gateway names
    # itself (API-Gateway-Execution-Logs_<api id>/<stage>) for every API of the account and region.
    ("serving", "ApiGatewayCloudWatchRole"): "service-role/AmazonAPIGatewayPushToCloudWatchLogs",
}


# ----------------------------------------------------------------------------- YAML with intrinsics
class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short-form tags into their long form."""


def _construct_intrinsic(loader: CfnLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def load_cfn(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=CfnLoader)  # a SafeLoader subclass


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def resolve_default(template: dict[str, Any], value: Any) -> Any:
    """A literal, or the default of the parameter a {"Ref": ...} names."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    return {path.stem: load_cfn(path) for path in sorted(STACKS.glob("*.yaml"))}


@pytest.fixture(scope="module")
def resources(templates: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(stack, logical id, resource) for every resource of every stack."""
    return [
        (stack, logical_id, resource)
        for stack, template in templates.items()
        for logical_id, resource in template["Resources"].items()
    ]


def of_type(resources: list[tuple[str, str, dict[str, Any]]], kind: str) -> list[tuple[str, str, dict]]:
    return [entry for entry in resources if entry[2]["Type"] == kind]


@pytest.fixture(scope="module")
def tools_bin() -> Path:
    bin_dir = Path(os.environ.get("INSTAREC_TOOLS_BIN", REPO / ".venv-tools" / "bin"))
    missing = [tool for tool in ("cfn-lint", "checkov") if not (bin_dir / tool).exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found in {bin_dir}. Create the tools venv with `make tools` "
            "(it installs the versions pinned in the Makefile) "
            "or point INSTAREC_TOOLS_BIN at a folder that has both."
        )
    return bin_dir


def _run_checkov(tools_bin: Path, directory: Path, frameworks: list[str]) -> dict[str, Any]:
    cmd = [
        str(tools_bin / "checkov"),
        "-d",
        str(directory),
        "--framework",
        *frameworks,
        "--skip-download",
        "--compact",
        "--output",
        "json",
    ]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    reports = report if isinstance(report, list) else [report]
    return {"returncode": proc.returncode, "reports": reports, "cmd": " ".join(cmd)}


@pytest.fixture(scope="module")
def checkov_runs(tools_bin: Path) -> list[dict[str, Any]]:
    """checkov over infra/ and the workflows, once per session, both scans in parallel."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        infra = pool.submit(_run_checkov, tools_bin, INFRA, ["cloudformation", "dockerfile", "secrets"])
        workflows = pool.submit(_run_checkov, tools_bin, WORKFLOWS, ["github_actions"])
        return [infra.result(), workflows.result()]


# ----------------------------------------------------------------------------- validators
def test_every_concern_has_a_stack(templates: dict[str, dict[str, Any]]) -> None:
    assert set(templates) == EXPECTED_STACKS


def test_cfn_lint_reports_nothing(tools_bin: Path) -> None:
    paths = sorted(str(p) for p in STACKS.glob("*.yaml"))
    proc = subprocess.run(
        [str(tools_bin / "cfn-lint"), "--format", "parseable", *paths],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    # Exit code 0: no errors, no warnings, no informational findings.
    assert proc.returncode == 0, f"cfn-lint findings:\n{proc.stdout}{proc.stderr}"


def test_checkov_passes_with_only_inline_explained_skips(
    templates: dict[str, dict[str, Any]], checkov_runs: list[dict[str, Any]]
) -> None:
    # One test for both properties, so that pytest-xdist runs checkov once, not once per worker.
    failures = []
    frameworks = set()
    applied = set()
    for run in checkov_runs:
        for report in run["reports"]:
            frameworks.add(report["check_type"])
            assert report["summary"]["parsing_errors"] == 0, run["cmd"]
            for check in report["results"]["failed_checks"]:
                failures.append(f"{check['check_id']} {check['file_path']} {check['resource']}")
            for check in report["results"].get("skipped_checks", []):
                stack = Path(check["file_path"]).stem
                logical_id = check["resource"].split(".", 1)[1]
                applied.add((stack, logical_id, check["check_id"]))
        assert run["returncode"] == 0 or failures, f"{run['cmd']} exited {run['returncode']}"
    assert not failures, "checkov failed checks:\n" + "\n".join(failures)
    assert {"cloudformation", "dockerfile", "github_actions"} <= frameworks

    # Every skip sits in the resource's Metadata with a one-line reason, and checkov applies it.
    declared = set()
    for stack, template in templates.items():
        for logical_id, resource in template["Resources"].items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                comment = skip.get("comment", "")
                assert len(comment) > 20 and "\n" not in comment.strip(), (stack, logical_id, skip)
                declared.add((stack, logical_id, skip["id"]))
    for path in [*INFRA.rglob("*"), *WORKFLOWS.rglob("*")]:
        if path.is_file() and path.suffix in {".yaml", ".yml", ".sh", ""}:
            assert "checkov:skip" not in path.read_text(errors="ignore"), f"use resource Metadata in {path}"
    assert declared == applied, f"stale or unexplained skips: {declared ^ applied}"


def test_templates_are_deployable_without_an_upload_bucket(templates: dict[str, dict[str, Any]]) -> None:
    for path in STACKS.glob("*.yaml"):
        # aws cloudformation deploy inlines templates up to 51,200 bytes.
        assert path.stat().st_size < 51_200, path
    for stack, template in templates.items():
        assert template.get("Description"), stack
        env = template["Parameters"]["EnvironmentName"]
        assert env["AllowedPattern"] == "^[a-z][a-z0-9]{1,9}$", stack
        for logical_id, resource in template["Resources"].items():
            assert "DependsOn" not in resource or resource["DependsOn"], (stack, logical_id)


# ----------------------------------------------------------------------------- data lake
def _bucket_policies(resources: list[tuple[str, str, dict]]) -> dict[tuple[str, str], dict]:
    policies = {}
    for stack, _, resource in of_type(resources, "AWS::S3::BucketPolicy"):
        bucket = resource["Properties"]["Bucket"]["Ref"]
        policies[(stack, bucket)] = resource["Properties"]["PolicyDocument"]
    return policies


def test_lake_has_the_zone_and_log_buckets(templates: dict[str, dict[str, Any]]) -> None:
    lake = templates["data-lake"]["Resources"]
    for logical_id in ("RawBucket", "CleanBucket", "CuratedBucket", "ConsumptionBucket", "LogsBucket"):
        assert lake[logical_id]["Type"] == "AWS::S3::Bucket"
    outputs = templates["data-lake"]["Outputs"]
    for zone in ("Raw", "Clean", "Curated", "Consumption"):
        assert f"{zone}BucketName" in outputs


def test_raw_zone_has_object_lock_governance_180_days(templates: dict[str, dict[str, Any]]) -> None:
    template = templates["data-lake"]
    raw = template["Resources"]["RawBucket"]["Properties"]
    assert raw["ObjectLockEnabled"] is True
    lock = raw["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    retention = lock["Rule"]["DefaultRetention"]
    assert retention["Mode"] == "GOVERNANCE"
    assert resolve_default(template, retention["Days"]) == 180
    assert "Years" not in retention


def test_lake_key_is_a_rotating_customer_key(templates: dict[str, dict[str, Any]]) -> None:
    key = templates["data-lake"]["Resources"]["LakeKey"]
    assert key["Type"] == "AWS::KMS::Key"
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain"
    for logical_id in ("RawBucket", "CleanBucket", "CuratedBucket", "ConsumptionBucket", "ArtifactsBucket"):
        rule = templates["data-lake"]["Resources"][logical_id]["Properties"]["BucketEncryption"][
            "ServerSideEncryptionConfiguration"
        ][0]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms", logical_id
        assert rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == {"Fn::GetAtt": ["LakeKey", "Arn"]}
        assert rule["BucketKeyEnabled"] is True, logical_id


def test_every_bucket_is_private_versioned_encrypted_and_tls_only(
    resources: list[tuple[str, str, dict]],
) -> None:
    policies = _bucket_policies(resources)
    buckets = of_type(resources, "AWS::S3::Bucket")
    assert len(buckets) >= 9
    for stack, logical_id, bucket in buckets:
        props = bucket["Properties"]
        where = f"{stack}/{logical_id}"
        assert props["VersioningConfiguration"]["Status"] == "Enabled", where
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, where
        assert "AccessControl" not in props, where
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"], where
        assert props["LifecycleConfiguration"]["Rules"], where
        assert bucket["DeletionPolicy"] in {"Retain", "Delete"}, where
        policy = policies.get((stack, logical_id))
        assert policy is not None, f"{where} has no bucket policy"
        tls = [
            s
            for s in policy["Statement"]
            if s.get("Effect") == "Deny"
            and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
        ]
        assert tls and tls[0]["Principal"] == "*" and tls[0]["Action"] == "s3:*", where


def test_no_bucket_policy_grants_the_public(resources: list[tuple[str, str, dict]]) -> None:
    for (stack, bucket), policy in _bucket_policies(resources).items():
        for statement in policy["Statement"]:
            if not isinstance(statement, dict) or "Effect" not in statement:
                continue  # an Fn::If around an optional statement
            if statement["Effect"] == "Allow":
                principal = statement["Principal"]
                assert principal != "*" and principal.get("AWS") != "*", (stack, bucket, statement["Sid"])


def test_access_logs_go_to_the_logs_bucket_under_date_partitions(
    resources: list[tuple[str, str, dict]],
) -> None:
    for stack, logical_id, bucket in of_type(resources, "AWS::S3::Bucket"):
        props = bucket["Properties"]
        if logical_id == "LogsBucket":
            assert "LoggingConfiguration" not in props
            continue
        logging = props["LoggingConfiguration"]
        assert logging["TargetObjectKeyFormat"]["PartitionedPrefix"]["PartitionDateSource"] == "EventTime"
        assert logging["LogFilePrefix"].startswith("s3-access/"), (stack, logical_id)
        dest = logging["DestinationBucketName"]
        assert dest == {"Ref": "LogsBucket"} or "Fn::ImportValue" in dest, (stack, logical_id)


def test_flow_log_objects_land_where_the_logs_bucket_lets_them(templates: dict[str, dict[str, Any]]) -> None:
    from fnmatch import fnmatchcase

    flow_log = templates["network"]["Resources"]["FlowLog"]["Properties"]
    destination, variables = flow_log["LogDestination"]["Fn::Sub"]
    assert "LogsBucketArn" in json.dumps(variables)
    prefix = destination.removeprefix("${LogsBucketArn}/")
    options = flow_log["DestinationOptions"]
    # The S3 keys AWS writes flow logs to (VPC User Guide, "Flow log files" for S3 destinations).
    account, region = "123456789012", "eu-west-1"
    if options.get("HiveCompatiblePartitions"):
        folder = f"AWSLogs/aws-account-id={account}/aws-service=vpcflowlogs/aws-region={region}/"
        folder += "year=2024/month=01/day=02/"
    else:
        folder = f"AWSLogs/{account}/vpcflowlogs/{region}/2024/01/02/"
    key = f"{prefix}{folder}{account}_vpcflowlogs_{region}_fl-0abc_20240102T0000Z_1a2b3c4d.log.parquet"

    policy = templates["data-lake"]["Resources"]["LogsBucketPolicy"]["Properties"]["PolicyDocument"]
    [delivery] = [
        s
        for s in policy["Statement"]
        if isinstance(s, dict)
        and s.get("Principal") == {"Service": "delivery.logs.amazonaws.com"}
        and s["Action"] == "s3:PutObject"
    ]
    pattern = delivery["Resource"]["Fn::Sub"].replace("${AWS::AccountId}", account)
    assert fnmatchcase(f"${{LogsBucket.Arn}}/{key}", pattern), (key, pattern)


def test_lake_lifecycle_expires_noncurrent_versions_and_old_logs(
    templates: dict[str, dict[str, Any]],
) -> None:
    lake = templates["data-lake"]["Resources"]
    for logical_id in ("RawBucket", "CleanBucket", "CuratedBucket", "ConsumptionBucket"):
        rules = lake[logical_id]["Properties"]["LifecycleConfiguration"]["Rules"]
        assert any("NoncurrentVersionExpiration" in rule for rule in rules), logical_id
    log_rules = lake["LogsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any(rule.get("ExpirationInDays") == {"Ref": "LogRetentionDays"} for rule in log_rules)


# ----------------------------------------------------------------------------- serving
def test_recommendations_table(templates: dict[str, dict[str, Any]]) -> None:
    table = templates["serving"]["Resources"]["RecommendationsTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["SSESpecification"]["SSEType"] == "KMS"
    assert table["KeySchema"] == [
        {"AttributeName": "user_id", "KeyType": "HASH"},
        {"AttributeName": "version", "KeyType": "RANGE"},
    ]
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    assert types == {"user_id": "N", "version": "S"}


def test_serving_lambda(templates: dict[str, dict[str, Any]]) -> None:
    fn = templates["serving"]["Resources"]["RecommendationsFunction"]["Properties"]
    assert fn["Handler"] == "instarec_assets.serving.lambda_handler"
    assert fn["Runtime"] == "python3.11"
    assert fn["Code"]["S3Key"] == {"Ref": "LambdaCodeKey"}
    assert fn["TracingConfig"]["Mode"] == "Active"
    variables = fn["Environment"]["Variables"]
    assert variables["INSTAREC_ENV"] == "aws"
    assert {"INSTAREC_DYNAMODB_TABLE", "INSTAREC_API_KEY_PARAMETER"} <= set(variables)
    assert "AWS_REGION" not in variables  # reserved: the Lambda runtime sets it


def test_api_has_get_and_options_with_key_usage_plan_logs_and_tracing(
    templates: dict[str, dict[str, Any]],
) -> None:
    res = templates["serving"]["Resources"]
    methods = _api_methods(res)
    assert set(methods) == {
        ("recommendations", "GET"),
        ("recommendations", "OPTIONS"),
        ("me/recommendations", "GET"),
        ("me/recommendations", "OPTIONS"),
        ("similar", "GET"),
        ("similar", "OPTIONS"),
    }
    assert methods[("recommendations", "GET")]["ApiKeyRequired"] is True  # services: API keys
    for path, parameter in (("recommendations", "user_id"), ("similar", "product_id")):
        assert methods[(path, "GET")]["RequestParameters"][f"method.request.querystring.{parameter}"] is True
        assert methods[(path, "GET")]["Integration"]["Type"] == "AWS_PROXY"
        assert methods[(path, "OPTIONS")]["Integration"]["Type"] == "MOCK"
    assert (
        methods[("similar", "GET")]["Integration"]["Uri"]
        == methods[("recommendations", "GET")]["Integration"]["Uri"]
    )
    assert res["RecommendationsResource"]["Properties"]["PathPart"] == "recommendations"
    invoked = {
        r["Properties"]["SourceArn"]["Fn::Sub"].rsplit("/", 1)[-1]
        for r in res.values()
        if r["Type"] == "AWS::Lambda::Permission"
        and r["Properties"]["Principal"] == "apigateway.amazonaws.com"
    }
    assert invoked == {"recommendations", "similar"}  # /me/recommendations ends in recommendations
    deployment = next(r for r in res.values() if r["Type"] == "AWS::ApiGateway::Deployment")
    assert {"GetSimilarMethod", "OptionsSimilarMethod"} <= set(deployment["DependsOn"])
    plan = res["UsagePlan"]["Properties"]
    assert {"RateLimit", "BurstLimit"} <= set(plan["Throttle"])
    assert res["UsagePlanKey"]["Properties"]["KeyId"] == {"Ref": "ApiKey"}
    stage = res["ApiStage"]["Properties"]
    assert stage["TracingEnabled"] is True
    assert stage["AccessLogSetting"]["DestinationArn"]
    assert res["ApiWebAclAssociation"]["Properties"]["WebACLArn"] == {"Fn::GetAtt": ["ApiWebAcl", "Arn"]}


def _api_methods(res: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(path below the stage, e.g. `me/recommendations`, HTTP method) -> the method's properties."""

    def path(resource_id: str) -> str:
        props = res[resource_id]["Properties"]
        parent = props["ParentId"]
        prefix = path(parent["Ref"]) + "/" if isinstance(parent, dict) and "Ref" in parent else ""
        return prefix + props["PathPart"]

    return {
        (path(r["Properties"]["ResourceId"]["Ref"]), r["Properties"]["HttpMethod"]): r["Properties"]
        for r in res.values()
        if r["Type"] == "AWS::ApiGateway::Method"
    }


def test_shopper_routes_use_the_cognito_authorizer_and_services_keep_keys(
    templates: dict[str, dict[str, Any]],
) -> None:
    res = templates["serving"]["Resources"]
    methods = _api_methods(res)
    [(authorizer_id, authorizer)] = [
        (k, r) for k, r in res.items() if r["Type"] == "AWS::ApiGateway::Authorizer"
    ]
    props = authorizer["Properties"]
    assert props["Type"] == "COGNITO_USER_POOLS"
    assert props["IdentitySource"] == "method.request.header.Authorization"
    assert props["ProviderARNs"] == [{"Fn::GetAtt": ["ShopperUserPool", "Arn"]}]
    for route in ("me/recommendations", "similar"):
        get = methods[(route, "GET")]
        assert get["AuthorizationType"] == "COGNITO_USER_POOLS", route
        assert get["AuthorizerId"] == {"Ref": authorizer_id}, route
        assert get["ApiKeyRequired"] is False, route
        allowed = methods[(route, "OPTIONS")]["Integration"]["IntegrationResponses"][0]["ResponseParameters"]
        assert "Authorization" in allowed["method.response.header.Access-Control-Allow-Headers"], route
    assert methods[("recommendations", "GET")]["AuthorizationType"] == "NONE"
    assert methods[("recommendations", "GET")]["ApiKeyRequired"] is True
    assert "user_id" not in str(methods[("me/recommendations", "GET")]["RequestParameters"])
    # the function re-checks issuer and audience and can verify a token itself (JWKS URL)
    env = res["RecommendationsFunction"]["Properties"]["Environment"]["Variables"]
    assert env["INSTAREC_AUTH_AUDIENCE"] == {"Ref": "ShopperAppClient"}
    assert "${ShopperUserPool}" in env["INSTAREC_AUTH_ISSUER"]["Fn::Sub"]
    assert env["INSTAREC_AUTH_JWKS_URL"]["Fn::Sub"].endswith("/.well-known/jwks.json")
    assert env["INSTAREC_AUTH_USER_CLAIM"] == "custom:instarec_user_id"
    unauthorized = next(
        r
        for r in res.values()
        if r["Type"] == "AWS::ApiGateway::GatewayResponse"
        and r["Properties"]["ResponseType"] == "UNAUTHORIZED"
    )
    assert unauthorized["Properties"]["StatusCode"] == "401"
    redacted = res["ApiWebAclLogging"]["Properties"]["RedactedFields"]
    assert {"SingleHeader": {"Name": "authorization"}} in redacted


def test_shopper_pool_is_admin_provisioned_with_a_read_only_user_id_and_pkce_client(
    templates: dict[str, dict[str, Any]],
) -> None:
    tpl = templates["serving"]
    res = tpl["Resources"]
    pool = res["ShopperUserPool"]["Properties"]
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    [attribute] = [a for a in pool["Schema"] if a["Name"] == "instarec_user_id"]
    assert attribute["Mutable"] is False
    assert pool["Policies"]["PasswordPolicy"]["MinimumLength"] >= 12
    client = res["ShopperAppClient"]["Properties"]
    assert client["GenerateSecret"] is False  # a public client: PKCE, never a secret in the page
    assert client["AllowedOAuthFlows"] == ["code"]  # no implicit flow
    assert "openid" in client["AllowedOAuthScopes"]
    assert client["CallbackURLs"] == {"Ref": "SignInCallbackUrls"}
    assert client["LogoutURLs"] == {"Ref": "SignInLogoutUrls"}
    assert "custom:instarec_user_id" in client["ReadAttributes"]
    assert "custom:instarec_user_id" not in client["WriteAttributes"]  # a shopper cannot pick an id
    assert tpl["Parameters"]["SignInCallbackUrls"]["Type"] == "CommaDelimitedList"
    assert res["ShopperUserPoolDomain"]["Properties"]["UserPoolId"] == {"Ref": "ShopperUserPool"}
    assert {"UserPoolId", "UserPoolClientId", "SignInDomain", "SignInCallbackUrl"} <= set(tpl["Outputs"])
    csp = templates["frontend"]["Resources"]
    assert "${SignInOrigin}" in json.dumps(csp)


def test_deploy_frontend_writes_sign_in_not_an_api_key_into_config_json() -> None:
    text = (WORKFLOWS / "deploy-frontend.yml").read_text()
    assert "get-api-key" not in text and "apiKey:" not in text and "ApiKeyId" not in text
    assert 'kind: "oidc"' in text and "UserPoolClientId" in text and "SignInDomain" in text
    assert "/oauth2/authorize" in text and "/oauth2/token" in text


def test_gateway_errors_have_the_handler_error_shape_and_cors(templates: dict[str, dict[str, Any]]) -> None:
    from instarec_assets.serving.api import STATUS_CODES

    res = templates["serving"]["Resources"]
    responses = {
        r["Properties"]["ResponseType"]: (logical_id, r["Properties"])
        for logical_id, r in res.items()
        if r["Type"] == "AWS::ApiGateway::GatewayResponse"
    }
    assert {
        "API_KEY_INVALID",
        "MISSING_AUTHENTICATION_TOKEN",
        "THROTTLED",
        "QUOTA_EXCEEDED",
        "WAF_FILTERED",
        "DEFAULT_4XX",
        "DEFAULT_5XX",
    } <= set(responses)
    expected_status = {
        "API_KEY_INVALID": "403",
        "THROTTLED": "429",
        "QUOTA_EXCEEDED": "429",
        "WAF_FILTERED": "403",
    }
    for response_type, (_, props) in responses.items():
        # $context.error.messageString is API Gateway's message, already a quoted JSON string.
        template = props["ResponseTemplates"]["application/json"]
        body = json.loads(
            template.replace("$context.error.messageString", '"Missing required request parameters"')
        )
        assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], response_type
        assert "\n" not in body["error"], response_type
        headers = props["ResponseParameters"]
        assert headers["gatewayresponse.header.Access-Control-Allow-Origin"] == {
            "Fn::Sub": "'${AllowedOrigin}'"
        }
        if response_type in expected_status:
            assert props["StatusCode"] == expected_status[response_type], response_type
        if "StatusCode" in props:
            assert int(props["StatusCode"]) in STATUS_CODES, response_type  # statuses the API documents
        if response_type in {"THROTTLED", "QUOTA_EXCEEDED"}:
            assert int(headers["gatewayresponse.header.Retry-After"].strip("'")) > 0, response_type
            assert headers["gatewayresponse.header.Access-Control-Expose-Headers"] == "'Retry-After'"
    # Gateway responses only reach the stage through a new deployment made after them.
    [(_, deployment)] = [(lid, r) for lid, r in res.items() if r["Type"] == "AWS::ApiGateway::Deployment"]
    methods = {lid for lid, r in res.items() if r["Type"] == "AWS::ApiGateway::Method"}
    assert {logical_id for logical_id, _ in responses.values()} | methods <= set(deployment["DependsOn"])


def test_serving_lambda_manages_only_its_own_network_interfaces(templates: dict[str, dict[str, Any]]) -> None:
    statements = _role_statements(templates["serving"], "FunctionRole")
    [create] = _granting(statements, "ec2:CreateNetworkInterface")
    resources = json.dumps(create["Resource"])
    assert "*" not in as_list(create["Resource"])
    assert "PrivateSubnetA" in resources and "PrivateSubnetB" in resources
    assert "security-group/${FunctionSecurityGroup.GroupId}" in resources
    for action in (
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
    ):
        [statement] = _granting(statements, action)
        assert "network-interface/*" in statement["Resource"]["Fn::Sub"], action
        assert "VpcId" in json.dumps(statement["Condition"]["ArnEquals"]["ec2:Vpc"]), action
    # AWS only accepts Resource "*" for these two.
    star = {
        a for s in statements if s["Resource"] == "*" for a in as_list(s["Action"]) if a.startswith("ec2:")
    }
    assert star == {"ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"}


@pytest.mark.parametrize(
    ("stack", "acl", "scope"),
    [("serving", "ApiWebAcl", "REGIONAL"), ("frontend", "SiteWebAcl", "CLOUDFRONT")],
)
def test_waf_rate_limit_100_per_5_minutes_and_sql_injection(
    templates: dict[str, dict[str, Any]], stack: str, acl: str, scope: str
) -> None:
    template = templates[stack]
    props = template["Resources"][acl]["Properties"]
    assert props["Scope"] == scope
    rules = {rule["Name"]: rule for rule in props["Rules"]}
    rate = [r for r in rules.values() if "RateBasedStatement" in r["Statement"]]
    assert len(rate) == 1
    statement = rate[0]["Statement"]["RateBasedStatement"]
    assert resolve_default(template, statement["Limit"]) == 100
    assert statement["EvaluationWindowSec"] == 300
    assert statement["AggregateKeyType"] == "IP"
    assert "Block" in rate[0]["Action"]
    managed = {
        r["Statement"]["ManagedRuleGroupStatement"]["Name"]
        for r in rules.values()
        if "ManagedRuleGroupStatement" in r["Statement"]
    }
    assert "AWSManagedRulesSQLiRuleSet" in managed
    logging = [r for r in template["Resources"].values() if r["Type"] == "AWS::WAFv2::LoggingConfiguration"]
    assert logging, f"{stack} web ACL is not logged"


def test_frontend_is_private_bucket_behind_cloudfront_https_only(
    templates: dict[str, dict[str, Any]],
) -> None:
    res = templates["frontend"]["Resources"]
    dist = res["Distribution"]["Properties"]["DistributionConfig"]
    assert dist["DefaultCacheBehavior"]["ViewerProtocolPolicy"] in {"https-only", "redirect-to-https"}
    assert dist["ViewerCertificate"]["AcmCertificateArn"] == {"Ref": "CertificateArn"}
    assert dist["ViewerCertificate"]["MinimumProtocolVersion"].startswith("TLSv1.2")
    assert dist["WebACLId"] == {"Fn::GetAtt": ["SiteWebAcl", "Arn"]}
    origin = dist["Origins"][0]
    assert origin["OriginAccessControlId"] == {"Fn::GetAtt": ["OriginAccessControl", "Id"]}
    assert "CustomOriginConfig" not in origin
    policy = res["SiteBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    reads = [s for s in policy if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in reads] == [{"Service": "cloudfront.amazonaws.com"}]
    assert "AWS:SourceArn" in reads[0]["Condition"]["StringEquals"]


# ----------------------------------------------------------------------------- orchestration and ML
def _container_env(task_definition: dict[str, Any]) -> dict[str, Any]:
    container = task_definition["Properties"]["ContainerDefinitions"][0]
    names = {e["Name"]: e["Value"] for e in container.get("Environment", [])}
    names.update({s["Name"]: s["ValueFrom"] for s in container.get("Secrets", [])})
    return names


def test_dagster_on_fargate_in_private_subnets(templates: dict[str, dict[str, Any]]) -> None:
    res = templates["orchestration"]["Resources"]
    for service in ("WebserverService", "DaemonService"):
        props = res[service]["Properties"]
        assert props["LaunchType"] == "FARGATE"
        assert props["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    daemon = res["DaemonService"]["Properties"]
    assert daemon["DesiredCount"] == 1 and daemon["DeploymentConfiguration"]["MaximumPercent"] == 100
    commands = {
        logical_id: res[logical_id]["Properties"]["ContainerDefinitions"][0].get("Command", [])
        for logical_id in ("WebserverTaskDefinition", "DaemonTaskDefinition", "RunTaskDefinition")
    }
    assert commands["WebserverTaskDefinition"][0] == "dagster-webserver"
    assert commands["DaemonTaskDefinition"][:2] == ["dagster-daemon", "run"]
    assert res["RunTaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Name"] == "run"
    lb = res["LoadBalancer"]["Properties"]
    assert lb["Scheme"] == "internal"
    assert res["HttpsListener"]["Properties"]["Protocol"] == "HTTPS"
    db = res["Database"]["Properties"]
    assert db["Engine"] == "postgres"
    assert db["StorageEncrypted"] is True and db["PubliclyAccessible"] is False
    assert res["Database"]["DeletionPolicy"] == "Snapshot"


def _dagster_yaml_env_vars() -> set[str]:
    config = yaml.safe_load((INFRA / "dagster.yaml").read_text())
    return {node["env"] for node in walk(config) if isinstance(node, dict) and set(node) == {"env"}}


def test_task_definitions_carry_the_app_and_dagster_variables(templates: dict[str, dict[str, Any]]) -> None:
    res = templates["orchestration"]["Resources"]
    needed = APP_ENV_VARS | _dagster_yaml_env_vars()
    assert {"DAGSTER_PG_PASSWORD", "DAGSTER_RUN_TASK_DEFINITION"} <= needed
    for logical_id in ("WebserverTaskDefinition", "DaemonTaskDefinition", "RunTaskDefinition"):
        env = _container_env(res[logical_id])
        assert needed <= set(env), f"{logical_id} lacks {needed - set(env)}"
        assert env["INSTAREC_ENV"] == "aws"
        container = res[logical_id]["Properties"]["ContainerDefinitions"][0]
        assert container["ReadonlyRootFilesystem"] is True
        mounts = {m["ContainerPath"] for m in container["MountPoints"]}
        assert {"/tmp", env["DAGSTER_HOME"]} <= mounts


def test_instarec_home_is_on_a_writable_volume(templates: dict[str, dict[str, Any]]) -> None:
    from pathlib import PurePosixPath

    from instarec_assets.lake.locations import LakeLocations

    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    [workdir] = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.MULTILINE)
    res = templates["orchestration"]["Resources"]
    for logical_id in ("WebserverTaskDefinition", "DaemonTaskDefinition", "RunTaskDefinition"):
        container = res[logical_id]["Properties"]["ContainerDefinitions"][0]
        assert container["ReadonlyRootFilesystem"] is True
        writable = [PurePosixPath(m["ContainerPath"]) for m in container["MountPoints"]]
        home = PurePosixPath(_container_env(res[logical_id])["INSTAREC_HOME"])
        assert home.is_absolute() and any(home.is_relative_to(m) for m in writable), (logical_id, home)
        # Without it the code's default (.instarec in the working directory) is on the read-only image.
        default = PurePosixPath(workdir) / LakeLocations().home
        assert not any(default.is_relative_to(m) for m in writable), logical_id


def test_run_tasks_read_one_warehouse_salt_from_secrets_manager_with_their_own_role(
    templates: dict[str, dict[str, Any]],
) -> None:
    from instarec_assets.warehouse.salt import MIN_SALT_LENGTH, SALT_ENV, SALT_SECRET_ENV

    res = templates["orchestration"]["Resources"]
    for logical_id in ("WebserverTaskDefinition", "DaemonTaskDefinition", "RunTaskDefinition"):
        assert SALT_ENV not in _container_env(res[logical_id]), logical_id  # never the value itself
    # The run task gets the secret's ARN and reads the value with boto3 (instarec_assets/warehouse/salt.py).
    assert _container_env(res["RunTaskDefinition"])[SALT_SECRET_ENV] == {"Ref": "WarehouseSaltSecret"}
    secret = res["WarehouseSaltSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    generate = secret["Properties"]["GenerateSecretString"]
    assert "SecretStringTemplate" not in generate  # a plain string, not JSON
    assert generate["PasswordLength"] >= MIN_SALT_LENGTH and generate["ExcludePunctuation"] is True
    assert secret["Properties"]["KmsKeyId"] == {
        "Fn::ImportValue": {"Fn::Sub": "instarec-${EnvironmentName}-LakeKeyArn"}
    }
    assert secret["DeletionPolicy"] == "Retain"  # a new salt would change every user_key
    # Only the run task role reads it, named on its own; the ECS agent reads only the database secret.
    reads = {
        role: _granting(_role_statements(templates["orchestration"], role), "secretsmanager:GetSecretValue")
        for role in ("RunTaskRole", "TaskExecutionRole", "ControlPlaneTaskRole")
    }
    assert [s["Resource"] for s in reads["RunTaskRole"]] == [{"Ref": "WarehouseSaltSecret"}]
    assert [s["Resource"] for s in reads["TaskExecutionRole"]] == [{"Ref": "DatabaseSecret"}]
    assert not reads["ControlPlaneTaskRole"]
    for statements in reads.values():
        assert all(as_list(s["Action"]) == ["secretsmanager:GetSecretValue"] for s in statements)


def test_dagster_yaml_is_valid_instance_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._config import convert_potential_field, process_config
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster._core.storage.config import pg_config
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    for name in _dagster_yaml_env_vars():
        monkeypatch.setenv(name, "placeholder")
    config = yaml.safe_load((INFRA / "dagster.yaml").read_text())
    instance = process_config(convert_potential_field(dagster_instance_config_schema()).config_type, config)
    assert instance.success, instance.errors
    assert config["run_launcher"]["class"] == "EcsRunLauncher"
    assert config["run_launcher"]["module"] == "dagster_aws.ecs"
    for schema, value in (
        (EcsRunLauncher.config_type(), config["run_launcher"]["config"]),
        (S3ComputeLogManager.config_type(), config["compute_logs"]["config"]),
        (pg_config(), config["storage"]["postgres"]),
    ):
        result = process_config(convert_potential_field(schema).config_type, value)
        assert result.success, result.errors


def test_network_has_private_subnets_nat_and_endpoints(templates: dict[str, dict[str, Any]]) -> None:
    res = templates["network"]["Resources"]
    assert any(r["Type"] == "AWS::EC2::NatGateway" for r in res.values())
    for subnet in ("PrivateSubnetA", "PrivateSubnetB"):
        assert res[subnet]["Properties"]["MapPublicIpOnLaunch"] is False
    services = set()
    for r in res.values():
        if r["Type"] == "AWS::EC2::VPCEndpoint":
            name = r["Properties"]["ServiceName"]["Fn::Sub"]
            services.add(name.split("}.", 1)[1])
    assert {"s3", "sagemaker.api", "sagemaker.runtime", "logs", "ecr.api", "ecr.dkr"} <= services
    assert any(r["Type"] == "AWS::EC2::FlowLog" for r in res.values())


def _role_statements(template: dict[str, Any], logical_id: str) -> list[dict[str, Any]]:
    role = template["Resources"][logical_id]["Properties"]
    return [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]


def _granting(statements: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [s for s in statements if action in as_list(s["Action"])]


def _curated_suffixes(statements: list[dict[str, Any]], action: str) -> set[str]:
    """`${Arn}/<suffix>` object resources of the statements granting `action`, all in the curated bucket."""
    suffixes = set()
    for statement in _granting(statements, action):
        for resource in as_list(statement["Resource"]):
            template, variables = resource["Fn::Sub"]
            assert "CuratedBucketArn" in json.dumps(variables), (action, resource)
            suffixes.add(template.removeprefix("${Arn}/"))
    return suffixes


def test_sagemaker_role_reads_and_writes_exactly_the_client_paths(
    templates: dict[str, dict[str, Any]],
) -> None:
    from instarec_assets.backends.sagemaker import SageMakerSettings

    defaults = SageMakerSettings(role_arn="", bucket="")
    staged, models, predictions = (
        defaults.data_prefix,
        defaults.model_prefix,
        defaults.transform_output_prefix,
    )
    role = templates["ml"]["Resources"]["SageMakerExecutionRole"]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "sagemaker.amazonaws.com"
    }
    statements = _role_statements(templates["ml"], "SageMakerExecutionRole")
    # Training channels and transform input are read from sagemaker/<job>/, transform jobs read
    # model.tar.gz from models/xgboost/<job>/output/; training writes that, transform writes predictions.
    assert _curated_suffixes(statements, "s3:GetObject") == {f"{staged}/*", f"{models}/*"}
    assert _curated_suffixes(statements, "s3:PutObject") == {f"{models}/*", f"{predictions}/*"}
    [listing] = _granting(statements, "s3:ListBucket")
    assert set(listing["Condition"]["StringLike"]["s3:prefix"]) == {
        f"{staged}/*",
        f"{models}/*",
        f"{predictions}/*",
    }
    text = json.dumps(statements)
    assert "CleanBucketArn" not in text and "/aws/sagemaker/TransformJobs" in text
    assert "SageMakerExecutionRoleArn" in templates["ml"]["Outputs"]


def test_run_role_can_batch_transform_and_load_recommendations_narrowly(
    templates: dict[str, dict[str, Any]],
) -> None:
    from fnmatch import fnmatchcase

    from instarec_assets.backends.sagemaker import make_job_name

    statements = _role_statements(templates["orchestration"], "RunTaskRole")
    arn = "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:"
    expected = {
        f"{arn}model/instarec-*": ["CreateModel", "DeleteModel", "AddTags"],
        f"{arn}transform-job/instarec-*": [
            "CreateTransformJob",
            "DescribeTransformJob",
            "StopTransformJob",
            "AddTags",  # tags passed at creation need sagemaker:AddTags
        ],
        f"{arn}training-job/instarec-*": [
            "CreateTrainingJob",
            "DescribeTrainingJob",
            "StopTrainingJob",
            "AddTags",
        ],
    }
    for action in {action for actions in expected.values() for action in actions}:
        granted = {
            r["Fn::Sub"] for s in _granting(statements, f"sagemaker:{action}") for r in as_list(s["Resource"])
        }
        assert granted == {resource for resource, actions in expected.items() if action in actions}, action
    # The names the client generates (the model is named like its transform job) fall under instarec-*.
    for name in (make_job_name(), make_job_name("instarec-score")):
        assert fnmatchcase(name, "instarec-*"), name
    # CreateModel and CreateTrainingJob pass the execution role, to SageMaker only.
    [passing] = _granting(statements, "iam:PassRole")
    assert passing["Resource"] == {
        "Fn::ImportValue": {"Fn::Sub": "instarec-${EnvironmentName}-SageMakerExecutionRoleArn"}
    }
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    # Both kinds of job the client starts log to their own group; the run role may read both.
    log_groups = {
        r["Fn::Sub"].split(":log-group:", 1)[1]
        for s in _granting(statements, "logs:GetLogEvents")
        for r in as_list(s["Resource"])
    }
    for group in ("/aws/sagemaker/TrainingJobs", "/aws/sagemaker/TransformJobs"):
        assert {group, f"{group}:log-stream:*"} <= log_groups, group

    # DynamoDbRecommendationStore.load: GetItem, BatchWriteItem, TransactWriteItems (PutItem,
    # DeleteItem and ConditionCheckItem are what IAM checks for its parts), registry Query, key-only Scan.
    table = {"Fn::ImportValue": {"Fn::Sub": "instarec-${EnvironmentName}-RecommendationsTableArn"}}
    dynamodb = [s for s in statements if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))]
    assert [s["Resource"] for s in dynamodb] == [table]
    assert set(dynamodb[0]["Action"]) == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:Query",
        "dynamodb:Scan",
    }
    # The serving Lambda only reads: top_k is GetItem only (the pointer, then the user's item).
    lambda_statements = _role_statements(templates["serving"], "FunctionRole")
    lambda_dynamodb = [
        s for s in lambda_statements if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))
    ]
    assert [(s["Action"], s["Resource"]) for s in lambda_dynamodb] == [
        ("dynamodb:GetItem", {"Fn::GetAtt": ["RecommendationsTable", "Arn"]})
    ]


# ----------------------------------------------------------------------------- analysts, access, monitoring
def test_glue_and_athena_over_the_clean_zone(templates: dict[str, dict[str, Any]]) -> None:
    res = templates["analytics"]["Resources"]
    paths = [t["Path"]["Fn::Sub"][0] for t in res["CleanZoneCrawler"]["Properties"]["Targets"]["S3Targets"]]
    assert paths == [f"s3://${{Bucket}}/{table}/" for table in CLEAN_TABLES]
    assert res["CleanZoneCrawler"]["Properties"]["CrawlerSecurityConfiguration"] == {
        "Ref": "GlueSecurityConfiguration"
    }
    keys = {"analysts": {"Fn::GetAtt": ["AnalystKey", "Arn"]}, "engineers": _import("LakeKeyArn")}
    for logical_id, who in (("AnalystsWorkGroup", "analysts"), ("EngineersWorkGroup", "engineers")):
        workgroup = res[logical_id]["Properties"]["WorkGroupConfiguration"]
        assert workgroup["EnforceWorkGroupConfiguration"] is True
        results = workgroup["ResultConfiguration"]
        assert results["OutputLocation"] == {"Fn::Sub": f"s3://${{AthenaResultsBucket}}/results/{who}/"}
        assert results["EncryptionConfiguration"] == {"EncryptionOption": "SSE_KMS", "KmsKey": keys[who]}


def _iam_statements(templates: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for stack, template in templates.items():
        for logical_id, resource in template["Resources"].items():
            props = resource.get("Properties", {})
            documents = []
            if resource["Type"] == "AWS::IAM::Role":
                documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
            elif resource["Type"] in {"AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"}:
                documents = [props["PolicyDocument"]]
            for document in documents:
                for statement in document["Statement"]:
                    yield stack, logical_id, statement


def test_iam_is_least_privilege(templates: dict[str, dict[str, Any]]) -> None:
    statements = list(_iam_statements(templates))
    assert len(statements) > 50
    for stack, logical_id, statement in statements:
        where = f"{stack}/{logical_id}/{statement.get('Sid')}"
        if statement["Effect"] == "Deny":  # a guard (DARole's); it grants nothing
            continue
        assert statement["Effect"] == "Allow", where
        actions = [a.lower() for a in as_list(statement["Action"])]
        for action in actions:
            assert action != "*" and not action.endswith(":*"), f"{where}: {action}"
        if "*" in as_list(statement["Resource"]):
            broad = [
                a
                for a in actions
                if a not in STAR_RESOURCE_ALLOWED and not a.startswith(STAR_RESOURCE_ALLOWED_PREFIXES)
            ]
            assert not broad, f"{where}: {broad} on Resource '*'"


def _managed_policy_resource(templates: dict[str, dict[str, Any]], stack: str, arn: dict) -> dict[str, Any]:
    """The resource a role's ManagedPolicyArns entry names: a Ref in its stack, or another stack's export."""
    if "Ref" in arn:
        return templates[stack]["Resources"][arn["Ref"]]
    export = arn["Fn::ImportValue"]["Fn::Sub"]
    for template in templates.values():
        for output in template.get("Outputs", {}).values():
            if output.get("Export", {}).get("Name", {}).get("Fn::Sub") == export:
                return template["Resources"][output["Value"]["Ref"]]
    raise AssertionError(f"{stack}: no stack exports {export}")


def test_roles_attach_no_aws_managed_policies_unless_allowed(
    templates: dict[str, dict[str, Any]], resources: list[tuple[str, str, dict]]
) -> None:
    attached = set()
    for stack, logical_id, role in of_type(resources, "AWS::IAM::Role"):
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            value = arn.get("Fn::Sub", arn) if isinstance(arn, dict) else arn
            if not (isinstance(value, str) and ":iam::aws:policy/" in value):
                # One of the project's own AWS::IAM::ManagedPolicy resources, of this stack or exported.
                assert _managed_policy_resource(templates, stack, arn)["Type"] == "AWS::IAM::ManagedPolicy"
                continue
            name = value.split(":iam::aws:policy/", 1)[1]
            assert AWS_MANAGED_POLICIES_ALLOWED.get((stack, logical_id)) == name, (
                f"{stack}/{logical_id} attaches the AWS-managed {name}; write an inline least-privilege "
                "policy or add it, with the reason, to AWS_MANAGED_POLICIES_ALLOWED"
            )
            attached.add((stack, logical_id))
    assert attached == set(AWS_MANAGED_POLICIES_ALLOWED), "stale AWS_MANAGED_POLICIES_ALLOWED entries"


def test_roles_are_passed_only_to_the_services_that_assume_them(templates: dict[str, dict[str, Any]]) -> None:
    for stack, logical_id, statement in _iam_statements(templates):
        if "iam:PassRole" in as_list(statement["Action"]):
            assert as_list(statement["Action"]) == ["iam:PassRole"], (stack, logical_id, statement.get("Sid"))
            assert statement["Condition"]["StringEquals"]["iam:PassedToService"], (stack, logical_id)
    # CloudFormation passes a role to a service when a non-IAM resource of the same stack names it.
    passed_to = set()
    for template in templates.values():
        roles = {lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
        for resource in template["Resources"].values():
            if resource["Type"].startswith("AWS::IAM::"):
                continue
            for node in walk(resource.get("Properties", {})):
                named = None
                if isinstance(node, dict) and node.get("Fn::GetAtt", [None])[0] in roles:
                    named = node["Fn::GetAtt"][0]
                elif isinstance(node, dict) and node.get("Ref") in roles:
                    named = node["Ref"]
                if named:
                    trust = template["Resources"][named]["Properties"]["AssumeRolePolicyDocument"]
                    passed_to.update(as_list(trust["Statement"][0]["Principal"]["Service"]))
    assert {"ecs-tasks.amazonaws.com", "lambda.amazonaws.com", "glue.amazonaws.com"} <= passed_to
    cfn_exec = templates["bootstrap"]["Resources"]["CfnComputePolicy"]["Properties"]["PolicyDocument"]
    [passing] = _granting(cfn_exec["Statement"], "iam:PassRole")
    assert set(passing["Condition"]["StringEquals"]["iam:PassedToService"]) == passed_to


def test_github_role_uses_only_this_environments_keys(
    templates: dict[str, dict[str, Any]], resources: list[tuple[str, str, dict]]
) -> None:
    statements = _role_statements(templates["bootstrap"], "GitHubDeployRole")
    kms = [s for s in statements if any(a.startswith("kms:") for a in as_list(s["Action"]))]
    assert kms
    tags = {"aws:ResourceTag/project": "instarec", "aws:ResourceTag/environment": {"Ref": "EnvironmentName"}}
    for statement in kms:
        assert statement["Condition"]["StringEquals"] == tags, statement["Sid"]
    # ... which holds only if every key the stacks create carries those tags.
    keys = of_type(resources, "AWS::KMS::Key")
    assert keys
    for stack, logical_id, key in keys:
        key_tags = {tag["Key"]: tag["Value"] for tag in key["Properties"]["Tags"]}
        assert {
            f"aws:ResourceTag/{k}": v for k, v in key_tags.items() if k in {"project", "environment"}
        } == tags, (
            stack,
            logical_id,
        )


def test_people_roles_and_the_analyst_is_read_only(templates: dict[str, dict[str, Any]]) -> None:
    res = templates["access"]["Resources"]
    for role in ("AdminRole", "DERole", "DARole"):
        trust = res[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
        assert trust["Condition"]["Bool"]["aws:MultiFactorAuthPresent"] == "true"
    analyst = [s for _, lid, s in _iam_statements(templates) if lid == "DARole"]
    shared = res["AnalystQueryPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert res["DARole"]["Properties"]["ManagedPolicyArns"] == [{"Ref": "AnalystQueryPolicy"}]
    for statement in analyst + shared:
        if statement["Effect"] == "Deny":
            continue
        text = json.dumps(statement)
        for bucket in ("RawBucketArn", "CuratedBucketArn", "ConsumptionBucketArn", "ArtifactsBucketArn"):
            assert bucket not in text, statement.get("Sid")
        writes = [
            a
            for a in as_list(statement["Action"])
            if a.startswith("s3:") and not a.startswith(("s3:Get", "s3:List"))
        ]
        if writes:  # only the Athena query results may be written
            assert "AthenaResultsBucketArn" in text and "/results/analysts/*" in text, statement.get("Sid")
        assert not any(
            a.startswith(("dynamodb:", "sagemaker:", "ecs:", "iam:")) for a in as_list(statement["Action"])
        )


def _import(name: str) -> dict[str, Any]:
    return {"Fn::ImportValue": {"Fn::Sub": f"instarec-${{EnvironmentName}}-{name}"}}


def _object_arns(name: str) -> dict[str, Any]:
    return {"Fn::Sub": ["${Arn}/*", {"Arn": _import(name)}]}


def test_the_analyst_reads_only_masked_tables_with_their_own_key(
    templates: dict[str, dict[str, Any]],
) -> None:
    res = templates["access"]["Resources"]
    shared = res["AnalystQueryPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    statements = [s for _, lid, s in _iam_statements(templates) if lid == "DARole"] + shared
    allowed = [s for s in statements if s["Effect"] == "Allow"]
    denied = [s for s in statements if s["Effect"] == "Deny"]
    for statement in allowed:
        text = json.dumps(statement)
        for raw in ("CleanBucketArn", "RawBucketArn", "_clean", "quarantined", "LogsBucketArn"):
            assert raw not in text, (statement["Sid"], raw)
    # Objects: the masked tables and the workgroup's own query results, nothing else.
    reads = [r for s in _granting(allowed, "s3:GetObject") for r in as_list(s["Resource"])]
    assert sorted(map(json.dumps, reads)) == sorted(
        map(
            json.dumps,
            [
                _object_arns("AnalystBucketArn"),
                {"Fn::Sub": ["${Arn}/results/analysts/*", {"Arn": _import("AthenaResultsBucketArn")}]},
            ],
        )
    )
    # Table definitions: the analyst database only.
    for statement in allowed:
        glue = [a for a in as_list(statement["Action"]) if a.startswith("glue:")]
        if glue:
            assert all(a.startswith("glue:Get") or a == "glue:BatchGetPartition" for a in glue)
            for resource in as_list(statement["Resource"]):
                text = json.dumps(resource)
                assert text.endswith(':catalog"}') or "AnalystDatabaseName" in text, text
    # Keys: the analysts' key through S3; the lake key only to decrypt the Glue catalog through Glue.
    keys = {}
    for statement in allowed:
        kms = [a for a in as_list(statement["Action"]) if a.startswith("kms:")]
        if kms:
            keys[json.dumps(statement["Resource"])] = (sorted(kms), statement["Condition"]["StringEquals"])
    assert keys == {
        json.dumps(_import("AnalystKeyArn")): (
            ["kms:Decrypt", "kms:GenerateDataKey"],
            {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}},
        ),
        json.dumps(_import("LakeKeyArn")): (
            ["kms:Decrypt"],
            {"kms:ViaService": {"Fn::Sub": "glue.${AWS::Region}.amazonaws.com"}},
        ),
    }
    # Defence in depth: explicit denies on every lake zone (quarantined_* lives in the clean bucket),
    # the clean catalog, and the lake key anywhere but through Glue.
    [zones] = _granting(denied, "s3:GetObject")
    for zone in ("RawBucketArn", "CleanBucketArn", "CuratedBucketArn", "ConsumptionBucketArn"):
        assert _import(zone) in zones["Resource"] and _object_arns(zone) in zones["Resource"], zone
    [catalog] = _granting(denied, "glue:GetTable")
    assert {"glue:GetTables", "glue:GetPartitions"} <= set(catalog["Action"])
    assert all("_clean" in json.dumps(r) for r in catalog["Resource"])
    [lake_key] = _granting(denied, "kms:Decrypt")
    assert lake_key["Resource"] == _import("LakeKeyArn")
    assert lake_key["Condition"] == {
        "StringNotEquals": {"kms:ViaService": {"Fn::Sub": "glue.${AWS::Region}.amazonaws.com"}}
    }
    # The clean catalog is the engineers' and the administrator's only, queried in their own
    # workgroup, whose results (raw ids possibly) DARole cannot read; nor can they write where it reads.
    [workgroup] = [s for s in allowed if "athena:StartQueryExecution" in s["Action"]]
    assert workgroup["Resource"]["Fn::Sub"].endswith(":workgroup/instarec-${EnvironmentName}-analysts")
    for role in ("DERole", "AdminRole"):
        assert res[role]["Properties"]["ManagedPolicyArns"] == [{"Ref": "EngineerQueryPolicy"}], role
    engineers = json.dumps(res["EngineerQueryPolicy"]["Properties"]["PolicyDocument"])
    assert "_clean" in engineers and "-engineers" in engineers and "/results/engineers/*" in engineers
    assert "-analysts" not in engineers and "/results/analysts/" not in engineers


def test_the_masked_tables_have_their_own_bucket_key_and_glue_database(
    templates: dict[str, dict[str, Any]],
) -> None:
    res = templates["analytics"]["Resources"]
    key = res["AnalystKey"]
    assert key["Properties"]["EnableKeyRotation"] is True and key["DeletionPolicy"] == "Retain"
    for bucket in ("AnalystBucket", "AthenaResultsBucket"):
        rule = res[bucket]["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == {
            "Fn::GetAtt": ["AnalystKey", "Arn"]
        }
    database = res["AnalystDatabase"]["Properties"]["DatabaseInput"]
    assert database["Name"] == {"Fn::Sub": "instarec_${EnvironmentName}_analyst"}
    assert database["LocationUri"] == {"Fn::Sub": "s3://${AnalystBucket}/"}
    outputs = templates["analytics"]["Outputs"].values()
    exports = {o["Export"]["Name"]["Fn::Sub"] for o in outputs if "Export" in o}
    for name in ("AnalystBucketName", "AnalystBucketArn", "AnalystKeyArn", "AnalystDatabaseName"):
        assert f"instarec-${{EnvironmentName}}-{name}" in exports


def test_run_tasks_publish_the_masked_tables_and_register_them(templates: dict[str, dict[str, Any]]) -> None:
    from instarec_assets.settings import VARIABLES

    res = templates["orchestration"]["Resources"]
    for logical_id in ("WebserverTaskDefinition", "DaemonTaskDefinition", "RunTaskDefinition"):
        env = _container_env(res[logical_id])  # the same asset graph in every container
        assert env["INSTAREC_ANALYST_BUCKET"] == _import("AnalystBucketName"), logical_id
        assert env["INSTAREC_ANALYST_DATABASE"] == _import("AnalystDatabaseName"), logical_id
    assert {"INSTAREC_ANALYST_BUCKET", "INSTAREC_ANALYST_DATABASE", "INSTAREC_WAREHOUSE_SALT_SECRET"} <= set(
        VARIABLES
    )
    statements = _role_statements(templates["orchestration"], "RunTaskRole")
    [writes] = [s for s in _granting(statements, "s3:PutObject") if "AnalystBucketArn" in json.dumps(s)]
    assert writes["Resource"] == _object_arns("AnalystBucketArn")
    [register] = _granting(statements, "glue:UpdateTable")
    assert {"glue:GetTable", "glue:CreateTable", "glue:GetDatabase"} <= set(register["Action"])
    assert not any("_clean" in json.dumps(r) for r in register["Resource"])
    assert sum("AnalystDatabaseName" in json.dumps(r) for r in register["Resource"]) == 2
    [key] = [s for s in statements if "AnalystKeyArn" in json.dumps(s)]
    assert set(key["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey"}


def test_cloudtrail_and_alarms(templates: dict[str, dict[str, Any]]) -> None:
    res = templates["monitoring"]["Resources"]
    trail = res["Trail"]["Properties"]
    assert trail["IsMultiRegionTrail"] is True and trail["EnableLogFileValidation"] is True
    assert trail["KMSKeyId"]
    metrics = set()
    for resource in res.values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        if "MetricName" in props:
            metrics.add(props["MetricName"])
        for metric in props.get("Metrics", []):
            if "MetricStat" in metric:
                metrics.add(metric["MetricStat"]["Metric"]["MetricName"])
    assert {
        "5XXError",
        "Errors",
        "ReadThrottleEvents",
        "WriteThrottleEvents",
        "DagsterRunFailures",
    } <= metrics
    filters = [
        r["Properties"]["FilterPattern"] for r in res.values() if r["Type"] == "AWS::Logs::MetricFilter"
    ]
    assert filters and all("RUN_FAILURE" in f for f in filters)


def test_cross_stack_imports_are_exported(templates: dict[str, dict[str, Any]]) -> None:
    exports = set()
    for template in templates.values():
        for output in template.get("Outputs", {}).values():
            if "Export" in output:
                exports.add(output["Export"]["Name"]["Fn::Sub"])
    imports = set()
    for template in templates.values():
        for node in walk(template["Resources"]):
            if isinstance(node, dict) and "Fn::ImportValue" in node:
                imports.add(node["Fn::ImportValue"]["Fn::Sub"])
    assert imports and imports <= exports, imports - exports


# ----------------------------------------------------------------------------- deploy
def _workflow(name: str) -> dict[str, Any]:
    text = (WORKFLOWS / name).read_text()
    assert not re.search(r"aws[-_]access[-_]key[-_]id|aws[-_]secret[-_]access[-_]key", text, re.IGNORECASE), (
        name
    )
    assert "secrets.AWS" not in text, name
    workflow = yaml.safe_load(text)
    # PyYAML reads the bare key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    assert workflow["on"] and workflow["jobs"], name
    return workflow


def _steps_text(job: dict[str, Any]) -> str:
    return "\n".join(json.dumps(step) for step in job["steps"])


def test_ci_workflow_runs_make_test_with_chromium() -> None:
    workflow = _workflow("ci.yml")
    assert workflow["permissions"] == {"contents": "read"}
    text = _steps_text(workflow["jobs"]["test"])
    assert "make test" in text and "apt-get install" in text and "chromium" in text


@pytest.mark.parametrize("name", ["deploy-infra.yml", "deploy-frontend.yml"])
def test_deploy_workflows_use_the_oidc_role(name: str) -> None:
    workflow = _workflow(name)
    assert workflow["permissions"] == {"contents": "read"}
    aws_jobs = [job for job in workflow["jobs"].values() if "configure-aws-credentials" in _steps_text(job)]
    assert aws_jobs, name
    for job in aws_jobs:
        assert job["permissions"]["id-token"] == "write"
        assert job["environment"]
        step = next(s for s in job["steps"] if "configure-aws-credentials" in s.get("uses", ""))
        assert "role-to-assume" in step["with"]
        assert not {"aws-access-key-id", "aws-secret-access-key"} & set(step["with"])


def test_deploy_infra_validates_packages_deploys_in_order() -> None:
    workflow = _workflow("deploy-infra.yml")
    validate = _steps_text(workflow["jobs"]["validate"])
    assert "cfn-lint" in validate and "checkov" in validate
    deploy = workflow["jobs"]["deploy"]
    assert "validate" in deploy["needs"]
    runs = [s["run"] for s in deploy["steps"] if "run" in s]
    joined = "\n".join(runs)
    order = [
        "data-lake",
        "network",
        "ml",
        "spark",
        "lambda",
        "serving",
        "analytics",
        "image",
        "orchestration",
        "access",
        "monitoring",
        "frontend",
    ]
    positions = [joined.index(step) for step in order]
    assert positions == sorted(positions), "stacks deploy out of dependency order"
    script = (INFRA / "scripts" / "deploy.sh").read_text()
    assert "describe-stack-events" in script and "ROLLBACK" in script
    assert "package_lambda.sh" in script and "aws s3 cp" in script


def test_deploy_frontend_syncs_and_invalidates() -> None:
    text = _steps_text(_workflow("deploy-frontend.yml")["jobs"]["publish"])
    assert "aws s3 sync" in text and "create-invalidation" in text


def _push_triggers(workflow: str, path: str) -> bool:
    """Whether a push to main changing `path` deploys with the workflow (its gate's path rules, as the
    deploy workflows start on the ci workflow's completion; see test_deploy_workflows.py)."""
    kind = workflow.removeprefix("deploy-").removesuffix(".yml")
    return DEPLOY_TARGET.touches([path], DEPLOY_TARGET.WORKFLOW_PATHS[kind])


def test_infra_and_page_deploys_never_start_for_the_same_file() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.splitlines()
    assert "instarec_assets/serving/static/index.html" in tracked
    both = [
        p
        for p in tracked
        if _push_triggers("deploy-infra.yml", p) and _push_triggers("deploy-frontend.yml", p)
    ]
    assert not both, f"deploy-infra and deploy-frontend would race on {both}"
    assert _push_triggers("deploy-frontend.yml", "instarec_assets/serving/static/index.html")
    # The image is built from what its Dockerfile copies, and pip reads the build files.
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    sources = [
        source
        for line in re.findall(r"^COPY\s+(?!--from)(.+)$", dockerfile, re.MULTILINE)
        for source in line.split()[:-1]
    ]
    assert {"setup.py", "pyproject.toml", "workspace.yaml", "instarec_assets"} <= set(sources)
    for source in [*sources, "Makefile", "infra/docker/Dockerfile", "infra/stacks/serving.yaml"]:
        path = source if (REPO / source).is_file() else f"{source}/serving/api.py"
        assert _push_triggers("deploy-infra.yml", path), path


def test_readme_names_only_stack_outputs_that_exist(templates: dict[str, dict[str, Any]]) -> None:
    readme = (INFRA / "README.md").read_text()
    rows = [line for line in readme.splitlines() if re.match(r"\| `(INSTAREC|AWS)_", line)]
    named = [
        (stack, output)
        for row in rows
        for stack, output in re.findall(rf"\b({'|'.join(sorted(EXPECTED_STACKS))}) `([A-Za-z0-9]+)`", row)
    ]
    assert ("serving", "AllowedOrigin") in named
    for stack, output in named:
        assert output in templates[stack].get("Outputs", {}), (
            f"infra/README.md: {stack} has no output {output}"
        )


def test_scripts_are_valid_bash() -> None:
    for script in [*sorted((INFRA / "scripts").glob("*.sh")), INFRA / "docker" / "entrypoint.sh"]:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_readme_documents_parameters_order_cost_and_environment() -> None:
    readme = (INFRA / "README.md").read_text()
    for needle in (
        "Deploy order",
        "cost",
        "INSTAREC_ENV=aws",
        *sorted(APP_ENV_VARS),
        "INSTAREC_API_KEY_PARAMETER",
    ):
        assert needle in readme, needle
    for stack in EXPECTED_STACKS:
        assert f"{stack}.yaml" in readme, stack


def test_every_action_is_pinned_by_commit_sha_with_its_tag() -> None:
    """A tag can be moved to other code; a full commit SHA cannot. The comment names the tag."""
    uses = [
        line.split("uses:", 1)[1].strip()
        for path in sorted(WORKFLOWS.glob("*.yml"))
        for line in path.read_text().splitlines()
        if "uses:" in line
    ]
    assert len(uses) >= 9
    for use in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+", use), use


def test_dependabot_updates_pip_and_actions() -> None:
    config = yaml.safe_load((REPO / ".github" / "dependabot.yml").read_text())
    assert config["version"] == 2
    ecosystems = {update["package-ecosystem"]: update for update in config["updates"]}
    assert set(ecosystems) == {"pip", "github-actions"}
    assert all(
        update["directory"] == "/" and update["schedule"]["interval"] for update in ecosystems.values()
    )
