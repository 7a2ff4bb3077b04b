#!/usr/bin/env bash
# Deploy instarec to an AWS account: one command, the same one the deploy-infra workflow runs.
#
#   infra/scripts/deploy.sh ENV [STEP ...]
#
# ENV is the environment name (dev, prod, ...). Settings come from infra/params/ENV.env (see
# infra/params/example.env) and may be overridden by environment variables. Without STEPs every
# step runs in dependency order:
#
#   data-lake network ml spark spark-job lambda serving api-key analytics image orchestration access
#   monitoring frontend
#
# Other steps: bootstrap (once, as an administrator: OIDC provider, GitHub role, CloudFormation
# execution role), validate (cfn-lint and checkov), env (print the INSTAREC_* variables of the
# deployed environment). Every stack deployment streams its events and fails on any rollback.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STACKS="$ROOT/infra/stacks"

die() { echo "error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

[[ $# -ge 1 ]] || die "usage: $0 ENV [STEP ...]"
ENV_NAME="$1"; shift
[[ "$ENV_NAME" =~ ^[a-z][a-z0-9]{1,9}$ ]] || die "ENV must be 2-10 lowercase letters/digits starting with a letter"

PARAMS_FILE="${PARAMS_FILE:-$ROOT/infra/params/$ENV_NAME.env}"
if [[ -f "$PARAMS_FILE" ]]; then
  # Values already in the environment win over the file.
  while IFS='=' read -r key value; do
    [[ -z "$key" || "$key" == \#* ]] && continue
    [[ -z "${!key:-}" ]] && export "$key=$value"
  done < "$PARAMS_FILE"
fi

REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
[[ -n "$REGION" ]] || die "set AWS_REGION (or put it in $PARAMS_FILE)"
export AWS_REGION="$REGION" AWS_PAGER=""
GIT_SHA="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || date -u +%Y%m%d%H%M%S)"
IMAGE_TAG="${IMAGE_TAG:-$GIT_SHA}"
LAMBDA_KEY="${LAMBDA_KEY:-lambda/instarec-serving-$GIT_SHA.zip}"

stack_name() { echo "instarec-$ENV_NAME-$1"; }

output() {  # output STACK KEY [REGION]
  aws cloudformation describe-stacks --region "${3:-$REGION}" --stack-name "$(stack_name "$1")" \
    --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue" --output text
}

print_new_events() {  # STACK REGION SINCE SEEN_FILE EVENTS_FILE
  local events
  events="$(aws cloudformation describe-stack-events --region "$2" --stack-name "$1" --max-items 200 \
    --output json 2>/dev/null || echo '{"StackEvents": []}')"
  jq -r --arg since "$3" '.StackEvents | reverse | .[] | select(.Timestamp >= $since)
      | [.EventId, .Timestamp, .LogicalResourceId, .ResourceType, .ResourceStatus, (.ResourceStatusReason // "")]
      | @tsv' <<<"$events" | while IFS=$'\t' read -r id ts logical type status reason; do
    grep -qxF "$id" "$4" && continue
    echo "$id" >> "$4"
    printf '%s  %-40s %-38s %-28s %s\n' "${ts:11:8}" "$logical" "$type" "$status" "$reason" >&2
    printf '%s\t%s\t%s\n' "$logical" "$type" "$status" >> "$5"
  done
}

deploy_stack() {  # deploy_stack NAME REGION [Key=Value ...]
  local name="$1" region="$2"; shift 2
  local stack; stack="$(stack_name "$name")"
  local template="$STACKS/$name.yaml"
  local since; since="$(date -u +%Y-%m-%dT%H:%M:%S)"
  local seen events
  seen="$(mktemp)"; events="$(mktemp)"
  # CloudFormation acts with the execution role from bootstrap.yaml when one is configured.
  local role=()
  if [[ -n "${CFN_EXEC_ROLE_ARN:-}" ]]; then role=(--role-arn "$CFN_EXEC_ROLE_ARN"); fi

  local status
  status="$(aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
    --query 'Stacks[0].StackStatus' --output text 2>/dev/null || echo NONE)"
  if [[ "$status" == ROLLBACK_COMPLETE ]]; then
    # A first creation that failed leaves an empty stack that can only be deleted.
    log "$stack is ROLLBACK_COMPLETE from a failed creation; deleting it first"
    aws cloudformation delete-stack --region "$region" --stack-name "$stack" "${role[@]}"
    aws cloudformation wait stack-delete-complete --region "$region" --stack-name "$stack"
  fi

  log "deploying $stack ($region)"
  aws cloudformation deploy --region "$region" --stack-name "$stack" --template-file "$template" \
    --capabilities CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset "${role[@]}" \
    --tags project=instarec "environment=$ENV_NAME" \
    --parameter-overrides "EnvironmentName=$ENV_NAME" "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 10
    print_new_events "$stack" "$region" "$since" "$seen" "$events"
  done
  local rc=0
  wait "$pid" || rc=$?
  print_new_events "$stack" "$region" "$since" "$seen" "$events"

  status="$(aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
    --query 'Stacks[0].StackStatus' --output text 2>/dev/null || echo NONE)"
  log "$stack: $status"
  if [[ $rc -ne 0 ]] || grep -qE $'\tAWS::CloudFormation::Stack\t.*ROLLBACK' "$events" \
      || [[ "$status" == *ROLLBACK* && -s "$events" ]] || [[ "$status" == *FAILED ]]; then
    echo "::error title=CloudFormation::$stack failed ($status); see the events above" >&2
    exit 1
  fi
  rm -f "$seen" "$events"
}

# ------------------------------------------------------------------------------ steps
step_validate() {
  local tools="${INSTAREC_TOOLS_BIN:-$ROOT/.venv-tools/bin}"
  "$tools/cfn-lint" "$STACKS"/*.yaml
  "$tools/checkov" -d "$ROOT/infra" --framework cloudformation dockerfile secrets --quiet --compact --skip-download
}

step_bootstrap() {
  : "${GITHUB_REPOSITORY:?set GITHUB_REPOSITORY=owner/name}"
  CFN_EXEC_ROLE_ARN="" deploy_stack bootstrap "$REGION" \
    "GitHubRepository=$GITHUB_REPOSITORY" "GitHubEnvironment=${GITHUB_ENVIRONMENT:-$ENV_NAME}" \
    "CreateOidcProvider=${CREATE_OIDC_PROVIDER:-true}"
  log "GitHub environment '${GITHUB_ENVIRONMENT:-$ENV_NAME}' variables:"
  echo "AWS_DEPLOY_ROLE_ARN=$(output bootstrap GitHubDeployRoleArn)"
  echo "AWS_CFN_EXEC_ROLE_ARN=$(output bootstrap CloudFormationExecutionRoleArn)"
}

step_data_lake() { deploy_stack data-lake "$REGION" "RawRetentionDays=${RAW_RETENTION_DAYS:-180}"; }
step_network() { deploy_stack network "$REGION" "VpcCidr=${VPC_CIDR:-10.40.0.0/16}"; }
step_ml() { deploy_stack ml "$REGION"; }
step_spark() { deploy_stack spark "$REGION"; }

# The Spark engine's job scripts (the clean steps, the feature build) and their Python environment,
# under the image tag the orchestration stack gives the run task (INSTAREC_EMR_ARTIFACTS_URI): a run
# submits the code of its own image.
step_spark_job() {
  local bucket prefix out
  bucket="$(output data-lake ArtifactsBucketName)"
  prefix="s3://$bucket/emr-serverless/jobs/$IMAGE_TAG"
  if aws s3api head-object --bucket "$bucket" \
      --key "emr-serverless/jobs/$IMAGE_TAG/instarec-spark-env.tar.gz" >/dev/null 2>&1; then
    log "$prefix already uploaded"
    return
  fi
  out="$ROOT/build/spark-env"
  rm -rf "$out" && mkdir -p "$out"
  docker run --rm --platform linux/amd64 -v "$ROOT:/src:ro" -v "$out:/out" \
    public.ecr.aws/amazonlinux/amazonlinux:2023 /src/infra/scripts/package_spark_env.sh /out
  log "uploading the Spark jobs and their environment to $prefix/"
  aws s3 cp "$ROOT/instarec_assets/spark/clean_job.py" "$prefix/clean_job.py" --only-show-errors
  aws s3 cp "$ROOT/instarec_assets/spark/features_job.py" "$prefix/features_job.py" --only-show-errors
  aws s3 cp "$out/instarec-spark-env.tar.gz" "$prefix/instarec-spark-env.tar.gz" --only-show-errors
}

step_lambda() {
  local zip bucket
  zip="$("$ROOT/infra/scripts/package_lambda.sh" "$ROOT/build/lambda" | tail -n 1)"
  bucket="$(output data-lake ArtifactsBucketName)"
  log "uploading $zip to s3://$bucket/$LAMBDA_KEY"
  aws s3 cp "$zip" "s3://$bucket/$LAMBDA_KEY" --only-show-errors
}

step_serving() {
  : "${SITE_DOMAIN:?set SITE_DOMAIN (host name of the page, for CORS)}"
  # Cognito sends a signed-in shopper back to the page (authorization code + PKCE).
  deploy_stack serving "$REGION" "LambdaCodeKey=$LAMBDA_KEY" "AllowedOrigin=https://$SITE_DOMAIN" \
    "ConfigureApiGatewayAccount=${CONFIGURE_API_GATEWAY_ACCOUNT:-true}" \
    "SignInDomainPrefix=${SIGN_IN_DOMAIN_PREFIX:-}" "SignInCallbackUrls=https://$SITE_DOMAIN/" \
    "SignInLogoutUrls=https://$SITE_DOMAIN/"
}

# The function checks X-Api-Key against the SecureString parameter; seed it with the usage plan's key.
step_api_key() {
  local name key_id value
  name="$(output serving ApiKeyParameterName)"
  if aws ssm get-parameter --name "$name" >/dev/null 2>&1; then
    log "$name exists; leaving it unchanged"
    return
  fi
  key_id="$(output serving ApiKeyId)"
  value="$(aws apigateway get-api-key --api-key "$key_id" --include-value --query value --output text)"
  aws ssm put-parameter --name "$name" --type SecureString --key-id "alias/instarec-$ENV_NAME-lake" \
    --value "$value" --description "instarec $ENV_NAME API keys (comma-separated)" >/dev/null
  log "created $name"
}

step_analytics() {
  deploy_stack analytics "$REGION" "ManageCatalogEncryption=${MANAGE_CATALOG_ENCRYPTION:-true}"
}

step_image() {
  local repo registry
  repo="$(output data-lake DagsterRepositoryUri)"
  registry="${repo%%/*}"
  if aws ecr describe-images --repository-name "instarec-$ENV_NAME/dagster" \
      --image-ids "imageTag=$IMAGE_TAG" >/dev/null 2>&1; then
    log "$repo:$IMAGE_TAG already pushed"
    return
  fi
  aws ecr get-login-password | docker login --username AWS --password-stdin "$registry"
  docker build --platform linux/amd64 -f "$ROOT/infra/docker/Dockerfile" -t "$repo:$IMAGE_TAG" "$ROOT"
  docker push "$repo:$IMAGE_TAG"
}

step_orchestration() {
  : "${UI_CERTIFICATE_ARN:?set UI_CERTIFICATE_ARN (ACM certificate for the Dagster UI load balancer)}"
  deploy_stack orchestration "$REGION" "ImageTag=$IMAGE_TAG" "UiCertificateArn=$UI_CERTIFICATE_ARN" \
    "UiAllowedCidr=${UI_ALLOWED_CIDR:-10.0.0.0/8}" "DbMultiAz=${DB_MULTI_AZ:-true}"
}

step_access() { deploy_stack access "$REGION" "TrustedPrincipalArn=${TRUSTED_PRINCIPAL_ARN:-}"; }

step_monitoring() {
  deploy_stack monitoring "$REGION" "AlarmEmail=${ALARM_EMAIL:-}" "CreateTrail=${CREATE_TRAIL:-true}"
}

step_frontend() {
  : "${SITE_DOMAIN:?set SITE_DOMAIN}"
  : "${SITE_CERTIFICATE_ARN:?set SITE_CERTIFICATE_ARN (ACM certificate in us-east-1)}"
  local api_url api_origin
  api_url="$(output serving ApiBaseUrl)"
  api_origin="$(echo "$api_url" | cut -d/ -f1-3)"
  deploy_stack frontend us-east-1 "DomainName=$SITE_DOMAIN" "CertificateArn=$SITE_CERTIFICATE_ARN" \
    "ApiOrigin=$api_origin" "SignInOrigin=$(output serving SignInDomain)"
}

step_env() {
  cat <<EOF
export INSTAREC_ENV=aws
export AWS_REGION=$REGION
export INSTAREC_RAW_BUCKET=$(output data-lake RawBucketName)
export INSTAREC_CLEAN_BUCKET=$(output data-lake CleanBucketName)
export INSTAREC_CURATED_BUCKET=$(output data-lake CuratedBucketName)
export INSTAREC_CONSUMPTION_BUCKET=$(output data-lake ConsumptionBucketName)
export INSTAREC_DYNAMODB_TABLE=$(output serving RecommendationsTableName)
export INSTAREC_SAGEMAKER_ROLE_ARN=$(output ml SageMakerExecutionRoleArn)
export INSTAREC_EMR_APPLICATION_ID=$(output spark SparkApplicationId)
export INSTAREC_EMR_JOB_ROLE_ARN=$(output spark SparkJobRoleArn)
export INSTAREC_EMR_LOG_GROUP=$(output spark SparkLogGroupName)
export INSTAREC_EMR_ARTIFACTS_URI=s3://$(output data-lake ArtifactsBucketName)/emr-serverless/jobs/$IMAGE_TAG
export INSTAREC_EMR_LOGS_URI=s3://$(output data-lake ArtifactsBucketName)/emr-serverless/logs
export INSTAREC_EMR_STAGING_URI=s3://$(output data-lake CleanBucketName)/emr-staging
export INSTAREC_API_KEY_PARAMETER=$(output serving ApiKeyParameterName)
EOF
}

ALL_STEPS=(data-lake network ml spark spark-job lambda serving api-key analytics image orchestration access monitoring frontend)
STEPS=("$@")
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=("${ALL_STEPS[@]}")

command -v aws >/dev/null || die "the AWS CLI v2 is required"
command -v jq >/dev/null || die "jq is required"
for step in "${STEPS[@]}"; do
  fn="step_${step//-/_}"
  declare -F "$fn" >/dev/null || die "unknown step '$step'"
  log "step $step"
  "$fn"
done
