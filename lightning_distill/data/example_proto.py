"""TensorFlow's ``Example`` / ``SequenceExample`` protobuf messages, defined here rather than imported.

The schema is TensorFlow's ``tensorflow/core/example/{feature,example}.proto``, field for field. Defining it
costs a few lines and no dependency: the ``tfrecord`` package ships compiled messages too, but importing them
imports its torch integration (2-3 s), which the data commands (``vdistill convert | synth | inspect``) must not
pay. The messages live in a private descriptor pool, so they coexist with other copies (tfrecord's, TF's).
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "tensorflow"
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_TYPES = {
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
}


def _field(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: str, *, repeated: bool = False,
           oneof: int | None = None) -> None:
    """Add a field: ``kind`` is a scalar type name or a message name in the package."""
    field = message.field.add(name=name, number=number, label=_REPEATED if repeated else _OPTIONAL)
    if kind in _TYPES:
        field.type = _TYPES[kind]
    else:
        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
        field.type_name = f".{_PACKAGE}.{kind}"
    if oneof is not None:
        field.oneof_index = oneof
    if repeated and kind in ("float", "int64"):
        field.options.packed = True  # proto3's default, as TensorFlow declares it


def _map(message: descriptor_pb2.DescriptorProto, name: str, entry: str, value: str) -> None:
    """Add ``map<string, value> name = 1``, protobuf's repeated map-entry message."""
    nested = message.nested_type.add(name=entry)
    nested.options.map_entry = True
    _field(nested, "key", 1, "string")
    _field(nested, "value", 2, value)
    _field(message, name, 1, f"{message.name}.{entry}", repeated=True)


def _schema() -> descriptor_pb2.FileDescriptorProto:
    schema = descriptor_pb2.FileDescriptorProto(name="vdistill/tf_example.proto", package=_PACKAGE, syntax="proto3")
    for name, kind in (("BytesList", "bytes"), ("FloatList", "float"), ("Int64List", "int64")):
        _field(schema.message_type.add(name=name), "value", 1, kind, repeated=True)
    feature = schema.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, kind) in enumerate(
        (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")), start=1
    ):
        _field(feature, name, number, kind, oneof=0)
    _map(schema.message_type.add(name="Features"), "feature", "FeatureEntry", "Feature")
    _field(schema.message_type.add(name="FeatureList"), "feature", 1, "Feature", repeated=True)
    _map(schema.message_type.add(name="FeatureLists"), "feature_list", "FeatureListEntry", "FeatureList")
    _field(schema.message_type.add(name="Example"), "features", 1, "Features")
    sequence = schema.message_type.add(name="SequenceExample")
    _field(sequence, "context", 1, "Features")
    _field(sequence, "feature_lists", 2, "FeatureLists")
    return schema


_POOL = descriptor_pool.DescriptorPool()
_FILE = _POOL.Add(_schema())
_MESSAGES = message_factory.GetMessages([_schema()], pool=_POOL)

Feature = _MESSAGES[f"{_PACKAGE}.Feature"]
Features = _MESSAGES[f"{_PACKAGE}.Features"]
FeatureList = _MESSAGES[f"{_PACKAGE}.FeatureList"]
Example = _MESSAGES[f"{_PACKAGE}.Example"]
SequenceExample = _MESSAGES[f"{_PACKAGE}.SequenceExample"]

__all__ = ["Example", "Feature", "FeatureList", "Features", "SequenceExample"]
