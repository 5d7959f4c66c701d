"""Governance: the records, intake, approvals, safety, watermark, publishing, audit and trace.

Service functions take an explicit SQLAlchemy Session and an actor; the caller owns the transaction.
Never imports Prefect.
"""
