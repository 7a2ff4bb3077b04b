"""The recommendations API: one handler for API Gateway + Lambda and for `instarec serve` (uvicorn).

```python
from instarec_assets.serving import lambda_handler       # Lambda: API Gateway REST proxy events
from instarec_assets.serving import ServingApi, ServingSettings
from instarec_assets.serving.asgi import create_app       # ASGI app factory (uvicorn --factory)
```

Importing this package loads only the standard library: no Dagster, no pipeline, no uvicorn, and
the serving store (boto3 for DynamoDB) is imported when the first request needs it. See README.md
here for the API, the security settings and the web page.
"""

from instarec_assets.serving.api import ServingApi, parse_query
from instarec_assets.serving.lambda_function import lambda_handler
from instarec_assets.serving.settings import ServingConfigError, ServingSettings

__all__ = ["ServingApi", "ServingConfigError", "ServingSettings", "lambda_handler", "parse_query"]
