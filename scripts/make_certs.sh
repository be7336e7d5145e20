#!/usr/bin/env bash
# TLS and SuperNode-authentication keys for a Flower deployment (docs/deploy.md).
#
#   bash scripts/make_certs.sh [OUT_DIR] [NUM_SUPERNODES] [EXTRA_SAN ...]
#
# OUT_DIR (default: certificates/) receives
#   ca.crt, ca.key                 a local certificate authority (give ca.crt to every SuperNode and to `flwr`)
#   server.pem, server.key         the SuperLink's certificate, signed by the CA, valid for localhost, 127.0.0.1,
#                                  ::1 and every EXTRA_SAN (e.g. IP:192.168.1.10 DNS:superlink.lab)
#   supernode_<i>, supernode_<i>.pub   one ECDSA P-384 key pair per SuperNode (OpenSSH format, as Flower reads
#                                  them); register each .pub with `flwr supernode register`.
# For real deployments use your organisation's CA; this script is for labs and tests.
set -euo pipefail
OUT="${1:-certificates}"
NODES="${2:-3}"
shift $(( $# > 2 ? 2 : $# )) || true
SAN="DNS:localhost,IP:127.0.0.1,IP:::1"
for extra in "$@"; do SAN="$SAN,$extra"; done
DAYS="${CERT_DAYS:-365}"
mkdir -p "$OUT"
cd "$OUT"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" -subj "/CN=edgefleet-local-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
openssl req -new -key server.key -subj "/CN=edgefleet-superlink" -out server.csr
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
  "$SAN" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" -sha256 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key

for i in $(seq 0 $(( NODES - 1 ))); do
  rm -f "supernode_$i" "supernode_$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "edgefleet-supernode-$i" -f "supernode_$i"
done
echo "certificates and $NODES SuperNode key pairs in $(pwd) (SAN: $SAN)"
