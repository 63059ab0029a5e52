"""The registered pyfunc as MLflow models-from-code: MLflow copies this file into the model and runs it to
load the model, so nothing is pickled (no python_model.pkl). The adapter travels as its safetensors files
(an artifact of the model), the code is the installed `deptune`'s."""

from mlflow.models import set_model

from deptune.registry.pyfunc import AdapterModel

set_model(AdapterModel())
