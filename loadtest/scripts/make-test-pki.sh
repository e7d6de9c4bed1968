#!/usr/bin/env bash
# Writes a throwaway CA (ca.pem) and a server certificate for 127.0.0.1 (IP
# subjectAltName; cert.pem, key.pem; ECDSA P-256) into DIR, for the TLS load scripts.
# Usage: loadtest/scripts/make-test-pki.sh DIR
set -euo pipefail
cd "$1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
  -out ca.pem -days 2 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem \
  -out req.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" >ext.cnf
openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem \
  -days 2 -extfile ext.cnf 2>/dev/null
