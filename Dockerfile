# One image for every Eventline service; the command picks the service:
#   docker run eventline python -m eventline_ingestion   (or _segmentation, _campaigns, _gateway)
# After the sources, two stages on the same Python (3.11) and Debian (bookworm): the first, which
# has a C compiler, installs the project as the second does and compiles the hot modules with mypyc
# against that install (README, "Compiled hot modules"); the second, slim, installs the project
# again at the same paths and copies only the compiled modules and the .pth file that imports them:
# no compiler, no mypy. `docker run eventline python -m eventline_shared.compiled` says what runs
# compiled (scripts/check_image_build.py runs these steps by hand).

# The files of the build context that both stages install, in one place.
FROM scratch AS sources
COPY pyproject.toml README.md /app/
# The generated code and Python client: their own distribution (eventline-api), installed
# in the same pip run so that the services' dependency on it is met from there.
COPY clients/python /app/clients/python
COPY libs /app/libs
COPY services /app/services
COPY protos /app/protos

FROM python:3.11-bookworm AS compiled

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY --from=sources /app /app
COPY scripts/compile_modules.py ./scripts/
# Not editable, as below: the manifest names the installed sources (their SHA-256 checked against
# what is compiled), so the finder imports the compiled modules only while those are unchanged.
RUN pip install ./clients/python '.[compile]' \
    && python scripts/compile_modules.py --installed

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY --from=sources /app /app
RUN pip install ./clients/python . \
    && useradd --system --uid 10001 eventline \
    && mkdir /data && chown eventline /data
# The compiled hot modules and their manifest, and the .pth file that installs their finder.
COPY --from=compiled /app/build/mypyc/lib /app/build/mypyc/lib
COPY --from=compiled /usr/local/lib/python3.11/site-packages/eventline_compiled.pth /usr/local/lib/python3.11/site-packages/
# Fails the build unless every compiled module imports compiled here.
RUN python -m eventline_shared.compiled

USER eventline
# Inside a container the services listen on every interface.
ENV EVENTLINE_INGESTION_HOST=0.0.0.0 \
    EVENTLINE_SEGMENTATION_HOST=0.0.0.0 \
    EVENTLINE_CAMPAIGNS_HOST=0.0.0.0 \
    EVENTLINE_GATEWAY_HOST=0.0.0.0
EXPOSE 50051 50052 50053 8080 9051 9052 9053 9080
STOPSIGNAL SIGTERM
CMD ["python", "-m", "eventline_ingestion"]
