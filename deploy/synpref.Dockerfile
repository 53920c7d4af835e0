# synpref with its GPU extras and the Dask/Ray runners: the Prefect worker and Dask workers.
FROM python:3.11-slim
WORKDIR /opt/synpref
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY pipeline pipeline
COPY annotation annotation
COPY flows flows
COPY prefect.yaml ./
RUN pip install --no-cache-dir ".[gpu,scale]"
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false
