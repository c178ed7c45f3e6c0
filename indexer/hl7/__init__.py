"""HL7 v2 intake over MLLP (#16): a hospital's RIS registers patients (ADT^A01/A04/A08),
merges them (A40), orders and cancels exams (ORM^O01, OMI^O23) and sends final reports
(ORU^R01) into the same services, through the same request schemas, as the REST intake.

parse.py turns a message into indexer/schemas.py's request models (one validation path);
handlers.py writes them with the Registry in one transaction with the journal (models/hl7.py)
that makes redelivery harmless; ack.py builds the replies; listener.py is the MLLP server
(TLS with the hospital's client certificate, or plain on loopback for tests).
"""
