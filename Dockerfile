# Herald's production image: one image, three roles (herald migrate | api | worker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HERALD_ENV=prod \
    HERALD_API_HOST=0.0.0.0

RUN useradd --create-home --uid 10001 herald
WORKDIR /app
COPY . /app
# Bytecode compiled at build time: the workflow sandbox re-imports modules for every new
# workflow, and PYTHONDONTWRITEBYTECODE would otherwise make each import compile source.
RUN pip install . && rm -rf /app/build && python -m compileall -q /app
USER herald

EXPOSE 8000 9464
CMD ["herald", "api"]
