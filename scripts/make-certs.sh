#!/usr/bin/env bash
# Make a demo CA and certificates for mutual TLS between livemig services.
#
#   scripts/make-certs.sh DIR [NAME ...]
#
# Writes DIR/ca.{crt,key} and, for each NAME (default: receiver sender client),
# DIR/NAME.{crt,key}: signed by the CA, usable as server and client certificate,
# valid for DNS:NAME, DNS:localhost and IP:127.0.0.1 (add hosts with SAN_EXTRA,
# e.g. SAN_EXTRA="DNS:dst.example.org,IP:10.0.0.2"). A demo CA: for production
# use your own PKI.
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR [NAME ...]}
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(receiver sender client)
mkdir -p "$dir"
days=${DAYS:-365}

if [ ! -f "$dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=livemig demo CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
fi
for name in "${names[@]}"; do
  san="DNS:$name,DNS:localhost,IP:127.0.0.1${SAN_EXTRA:+,$SAN_EXTRA}"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days "$days" -out "$dir/$name.crt" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n' "$san") \
    2>/dev/null
  rm -f "$dir/$name.csr"
  chmod 600 "$dir/$name.key"
done
chmod 600 "$dir/ca.key"
echo "CA and certificates for: ${names[*]} in $dir"
