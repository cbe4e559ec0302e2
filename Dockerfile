# castlab image for the Prefect worker and the ML backend (docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN scripts/setup_venv.sh project
ENV PATH="/app/.venv/bin:${PATH}" CASTLAB_WORKSPACE=/workspace
