#!/usr/bin/env bash
# The system programs the test suite runs for real, from Debian, installed when
# missing (as root): headless Chromium and its driver and Firefox (the inspector's
# page), HAProxy (several servers behind a load balancer) and dnsmasq (DNS
# discovery of server replicas). dnsmasq-base is the binary alone: the dnsmasq
# package would also start a system-wide DNS service. The tests start every one of
# them themselves, on loopback.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v firefox-esr >/dev/null || missing+=(firefox-esr)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
