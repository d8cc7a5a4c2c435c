# One image for every Nightshift process; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NIGHTSHIFT_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY worker worker
COPY db db
COPY nightshift nightshift
RUN pip install --no-cache-dir '.[worker,flower,s3]'
VOLUME /data
EXPOSE 8080
CMD ["nightshift", "api"]
