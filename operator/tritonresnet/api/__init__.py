"""The TritonResNet resource as both sides see it: the spec users write, the status the operator reports,
and the names and labels of its children. Imported by the controller and by the people-facing clients;
imports neither."""
