"""`toolkit serve`: a REST API around a run's variant (FastAPI on uvicorn), with dynamic batching."""
