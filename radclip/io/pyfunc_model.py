"""The served RadCLIP as an MLflow model from code: MLflow runs this file to get the model, so nothing
is pickled and the model is the code logged with it (:func:`radclip.io.mlflow_pyfunc.log_model`)."""

from mlflow.models import set_model

from radclip.io.mlflow_pyfunc import RadCLIPPyfunc

set_model(RadCLIPPyfunc())
