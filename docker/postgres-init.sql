CREATE DATABASE issuer OWNER streamtoken;
CREATE DATABASE notifier OWNER streamtoken;
