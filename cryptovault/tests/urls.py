"""A tiny DRF endpoint for exercising the error handling shared by every API."""

from django.urls import path
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from cryptovault.exceptions import ApplicationError


class EchoApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    class InputSerializer(serializers.Serializer):
        amount = serializers.DecimalField(max_digits=20, decimal_places=8)
        refuse = serializers.BooleanField(default=False)

    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if serializer.validated_data["refuse"]:
            raise ApplicationError("Not enough money.", code="insufficient_funds")
        return Response({"amount": str(serializer.validated_data["amount"])})


urlpatterns = [path("echo", EchoApi.as_view())]
