# The quota image: the library, the CLI and the RQ workers.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY quota ./quota
COPY workers ./workers
RUN pip install --no-cache-dir ".[serve]"
ENTRYPOINT ["quota"]
