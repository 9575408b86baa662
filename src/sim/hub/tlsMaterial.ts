/**
 * The dev hub's TLS certificate and key (configs/sim/tls/hub-sim.*, publicly known, loopback use
 * only), embedded so the esbuild-bundled CLI can serve HTTPS without reading files.
 *
 * Deliberately NOT the PVE simulator's certificate: with one certificate for both servers, a
 * hub client that wrongly used the PVE trust (a pin, or insecure loopback) looked correct in
 * every test (issue 8, finding 4). Distinct certificates make such a mix-up fail.
 */
export const hubCertPem = `-----BEGIN CERTIFICATE-----
MIIByjCCAXGgAwIBAgIUP1suQcYtmDs1rFSnNVmOEHA8nXcwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHaHViLXNpbTAeFw0yNjExMzAwOTQ5MzZaFw0zNjExMjcwOTQ5
MzZaMBIxEDAOBgNVBAMMB2h1Yi1zaW0wWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AATSoWQ7lIVlW2HEhKkYGshcQ/WV/Kc8F8Olm2v4ahf6S/1i5DBK/fQ+E5tbVw0y
bUupjF/MLeYAl3bT3JqdxTXso4GkMIGhMB0GA1UdDgQWBBRgyymAXz8ceyrbgtlU
YBTz60bJdjAfBgNVHSMEGDAWgBRgyymAXz8ceyrbgtlUYBTz60bJdjAsBgNVHREE
JTAjgglsb2NhbGhvc3SHBH8AAAGHEAAAAAAAAAAAAAAAAAAAAAEwDAYDVR0TAQH/
BAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwCgYIKoZI
zj0EAwIDRwAwRAIgYNTrVGahk0P6k47ufXeXU3aXMkydx5mF/bVZ8Sab9b4CIDyC
AlYrH+ma/Kb+3MqsAoUBlQhDhpFhmhIsd2iFmZ2V
-----END CERTIFICATE-----`

export const hubKeyPem = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKQJ5xudjdwoCJyFN
pez/gIw6U2d5ryYJkDFty/xVDP2hRANCAATSoWQ7lIVlW2HEhKkYGshcQ/WV/Kc8
F8Olm2v4ahf6S/1i5DBK/fQ+E5tbVw0ybUupjF/MLeYAl3bT3JqdxTXs
-----END PRIVATE KEY-----`
