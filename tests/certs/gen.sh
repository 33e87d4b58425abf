#!/usr/bin/env bash
# Regenerates the test certificates (checked in; valid for 100 years, for loopback tests only):
# a CA, a server certificate for localhost / 127.0.0.1 (gateways and nodes), and a client
# certificate (gateways presenting themselves to nodes under mTLS). Keys are P-256.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
days=36500
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=Partyline test CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
leaf() { # name cn ext
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -out "$1.pem" -extfile <(printf '%s\n' "$3")
  rm -f "$1.csr"
}
leaf server "localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth
basicConstraints=critical,CA:FALSE"
leaf client "partyline-gateway" "subjectAltName=DNS:partyline-gateway
extendedKeyUsage=clientAuth
basicConstraints=critical,CA:FALSE"
# A CA nobody trusts, with a server certificate it signed: a node that is not the cluster's.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=Other CA" -keyout other-ca.key -out other-ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" -keyout other-server.key -out other-server.csr
openssl x509 -req -in other-server.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial -days "$days" -out other-server.pem \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
rm -f other-server.csr ./*.srl
