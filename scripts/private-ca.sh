#!/usr/bin/env bash
# A private certificate authority and a server certificate signed by it, for
# deployments whose devices trust a CA of their own instead of a public one.
#
#   scripts/private-ca.sh OUT_DIR [NAME ...]
#
# NAME: DNS names or IP addresses the server is reached at (default: localhost 127.0.0.1).
# Writes into OUT_DIR (created, mode 0700):
#   ca.pem           the CA certificate: give it to devices (NVS / --ca) and HTTP clients
#   ca-key.pem       the CA private key: keep it offline; it signs new server certificates
#   server-cert.pem  the server certificate chain (server, then CA): TLS_CERT_FILE
#   server-key.pem   the server private key: TLS_KEY_FILE
# An existing CA in OUT_DIR is reused, so running it again renews only the server
# certificate and devices keep working. Keys are P-256; private keys are mode 0600.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [DNS-name-or-IP ...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
out=$1; shift
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(localhost 127.0.0.1)
command -v openssl >/dev/null || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }
CA_DAYS=${CA_DAYS:-3650}
SERVER_DAYS=${SERVER_DAYS:-397}

mkdir -p "$out" && chmod 700 "$out"
umask 077

if [[ ! -f "$out/ca.pem" || ! -f "$out/ca-key.pem" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$CA_DAYS" \
    -subj "/CN=Fleetwire private CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$out/ca-key.pem" -out "$out/ca.pem" 2>/dev/null
  chmod 644 "$out/ca.pem"
fi

san=""
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=${names[0]}" -keyout "$out/server-key.pem" -out "$tmp/server.csr" 2>/dev/null
printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > "$tmp/ext.cnf"
openssl x509 -req -in "$tmp/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial \
  -CAserial "$tmp/ca.srl" -days "$SERVER_DAYS" -extfile "$tmp/ext.cnf" -out "$tmp/server.pem" 2>/dev/null
cat "$tmp/server.pem" "$out/ca.pem" > "$out/server-cert.pem"
chmod 644 "$out/server-cert.pem"
chmod 600 "$out/server-key.pem" "$out/ca-key.pem"
echo "CA: $out/ca.pem   server: $out/server-cert.pem + $out/server-key.pem   names: ${names[*]}" >&2
