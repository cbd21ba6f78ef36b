# One image for every Eventline service; the command picks the service:
#   docker run eventline python -m eventline_ingestion   (or _segmentation, _campaigns, _gateway)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
# The generated code and Python client: their own distribution (eventline-api), installed
# in the same pip run so that the services' dependency on it is met from here.
COPY clients/python ./clients/python
COPY libs ./libs
COPY services ./services
COPY protos ./protos
RUN pip install ./clients/python . \
    && useradd --system --uid 10001 eventline \
    && mkdir /data && chown eventline /data

USER eventline
# Inside a container the services listen on every interface.
ENV EVENTLINE_INGESTION_HOST=0.0.0.0 \
    EVENTLINE_SEGMENTATION_HOST=0.0.0.0 \
    EVENTLINE_CAMPAIGNS_HOST=0.0.0.0 \
    EVENTLINE_GATEWAY_HOST=0.0.0.0
EXPOSE 50051 50052 50053 8080 9051 9052 9053 9080
STOPSIGNAL SIGTERM
CMD ["python", "-m", "eventline_ingestion"]
