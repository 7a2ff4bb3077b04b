"""Privacy: forgetting a shopper everywhere the pipeline keeps their data, with an audit log.

Dagster-free: `forget.forget_user` and `forget.withdraw_request` do the work; the `forget_shopper`
job and `instarec forget` call them.
"""
