# livemig: one image for the receiver, the sender, the memtouch guest and the client.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos protos
COPY common common
COPY sender sender
COPY receiver receiver
COPY cli cli
RUN pip install . && rm -rf /src
WORKDIR /

ENTRYPOINT ["livemig"]
CMD ["--help"]
